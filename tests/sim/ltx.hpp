/**
 * @file ltx.hpp
 * The simulation's transaction files: what one committed transaction changed, as LiteFS
 * keeps an LTX file per transaction. Internal to the simulation (the shim writes them on
 * a primary, the replicator reads, ships and prunes them).
 *
 * Each node keeps its history in `<root>/.fwd-sim-ltx/<hostname>/<db>/`, outside its
 * mount (as LiteFS keeps its LTX files in its data directory), one file per TXID named
 * `%016x.ltx`: the position before and after the transaction, the page size, the database
 * size in pages after it, and the image of every page it changed. A file appears whole
 * (written aside, then renamed) and never changes afterwards, so the replicator hard-links
 * it into a replica's history.
 */
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace fwd_sim::ltx {

/** One transaction: the pages it left, in ascending page number. */
struct record {
  std::uint64_t txid = 0;
  std::uint64_t pre_checksum = 0;   ///< the position's checksum before it
  std::uint64_t post_checksum = 0;  ///< and after it
  std::uint32_t page_size = 0;
  std::uint32_t commit = 0;  ///< database size in pages after the transaction
  std::vector<std::uint32_t> page_numbers;
  std::string pages;  ///< page_numbers.size() * page_size bytes, in the same order
};

/** The history directory of the database at `db_path` (`<root>/<host>/<db>`). */
std::filesystem::path directory_of(const std::filesystem::path& db_path);

/** `<dir>/%016x.ltx`. */
std::filesystem::path file_of(const std::filesystem::path& dir, std::uint64_t txid);

/** Writes `r` into `dir` (created if needed) whole, then visible under its name.
 * @throws std::system_error on I/O errors. */
void write(const std::filesystem::path& dir, const record& r);

/** Reads the record of `txid` from `dir`; nullopt if absent, partial or malformed. */
std::optional<record> read(const std::filesystem::path& dir, std::uint64_t txid);

/** Makes `to`'s record of `txid` the same file as `from`'s (a hard link, replacing any
 * record of that TXID `to` had). @throws std::system_error on I/O errors. */
void link(const std::filesystem::path& from, const std::filesystem::path& to, std::uint64_t txid);

/** Removes every record from `dir` (a node whose history was replaced by a snapshot). */
void clear(const std::filesystem::path& dir);

}  // namespace fwd_sim::ltx
