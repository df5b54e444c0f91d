#pragma once

// A read buffer that yields whole frames: bytes are read into its free tail, frames are
// decoded in place, and it grows only to the size of the frame being received (which the
// decoder has already checked against the maximum).

#include <fwd/rpc/wire.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>
#include <utility>

namespace fwd::rpc {

class frame_buffer {
 public:
  explicit frame_buffer(std::size_t initial = 16 * 1024) : capacity_(initial), data_(new char[initial]) {}

  /// Room to read into: at least `min_free` bytes, or as much as the pending frame needs.
  std::pair<char*, std::size_t> prepare(std::size_t min_free = 4096) {
    if (begin_ == end_) begin_ = end_ = 0;
    std::size_t want = std::max(min_free, needed_);
    if (capacity_ - end_ < want) {
      if (begin_ > 0) {  // slide the partial frame to the front
        std::memmove(data_.get(), data_.get() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
      }
      if (capacity_ - end_ < want) {
        std::size_t grown = std::max(capacity_ * 2, end_ + want);
        std::unique_ptr<char[]> bigger(new char[grown]);
        std::memcpy(bigger.get(), data_.get(), end_);
        data_ = std::move(bigger);
        capacity_ = grown;
      }
    }
    return {data_.get() + end_, capacity_ - end_};
  }

  void commit(std::size_t n) noexcept { end_ += n; }

  /**
   * The next whole frame, if any: returns true with `out` set (valid until the next
   * prepare()). Returns false when more bytes are needed, or with `ec` set when the bytes
   * are not a valid frame. Each frame is followed by a tag of `tag_bytes` (see
   * wire::decode_frame).
   */
  bool next(std::size_t max_frame_size, wire::frame_view& out, boost::system::error_code& ec,
            std::size_t tag_bytes = 0) {
    std::size_t consumed = 0;
    const std::string_view bytes(data_.get() + begin_, end_ - begin_);
    ec = wire::decode_frame(bytes, max_frame_size, out, consumed, tag_bytes);
    if (ec) return false;
    if (consumed == 0) {
      // Remember how much the pending frame needs, so that prepare() makes room for it.
      wire::frame_header h;
      needed_ = bytes.size() >= wire::header_size && !wire::decode_header(bytes, max_frame_size, h)
                    ? static_cast<std::size_t>(wire::frame_size(h)) + tag_bytes - bytes.size()
                    : 0;
      return false;
    }
    needed_ = 0;
    begin_ += consumed;
    return true;
  }

  /// The bytes received and not yet taken as a frame (valid until the next prepare()).
  std::string_view data() const noexcept { return {data_.get() + begin_, end_ - begin_}; }

  /// Bytes received and not yet taken as a frame (part of the next frame).
  std::size_t buffered() const noexcept { return end_ - begin_; }

  /// The whole size of the frame being received, once its header is in and next() has
  /// looked at it; 0 otherwise.
  std::size_t partial_frame_size() const noexcept { return needed_ == 0 ? 0 : buffered() + needed_; }

  /// Drops up to `n` buffered bytes (those of a frame being skipped); returns how many.
  std::size_t discard(std::size_t n) noexcept {
    const std::size_t dropped = std::min(n, buffered());
    begin_ += dropped;
    needed_ = 0;
    return dropped;
  }

  /// Shrinks back after a large frame, so that an idle connection holds little memory.
  void shrink(std::size_t initial = 16 * 1024) {
    if (begin_ == end_ && capacity_ > 4 * initial) {
      data_.reset(new char[initial]);
      capacity_ = initial;
      begin_ = end_ = 0;
    }
  }

 private:
  std::size_t capacity_;
  std::unique_ptr<char[]> data_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  std::size_t needed_ = 0;
};

}  // namespace fwd::rpc
