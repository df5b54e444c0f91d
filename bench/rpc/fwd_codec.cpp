// What serialisation costs one fwd call, in process (no sockets): the four codec steps of a
// round trip for the rpc suite's procedure (std::string(std::string), 64 bytes), and, for
// scale, building one std::locale with an extra facet, which Boost 1.81's binary archives
// do in every constructor (basic_binary_[io]primitive's archive_locale member).
//
//   bench_rpc_fwd_codec run    prints rpc.codec_ns.*
#include <fwd/procedure.hpp>

#include <locale>

#include "../common/bench_support.hpp"

namespace {

using namespace fwd_bench;

inline constexpr fwd::procedure<std::string(std::string)> echo{"bench.echo"};

// Keeps the optimiser from dropping the measured work.
std::size_t sink = 0;

/** Nanoseconds per call of `op`, over ~0.3 s after a short warm-up. */
template <class Op>
double ns_per_op(Op&& op) {
  for (int i = 0; i < 1000; ++i) op();
  std::size_t n = 0;
  const auto t0 = clock::now();
  const auto end = t0 + window(0.3);
  clock::time_point t1;
  do {
    for (int i = 0; i < 256; ++i) op();
    n += 256;
    t1 = clock::now();
  } while (t1 < end);
  return static_cast<double>(elapsed_ns(t0, t1)) / static_cast<double>(n);
}

int run() {
  const std::string payload = make_payload();
  const std::string args = fwd::detail::encode_arguments(echo, payload);
  const std::string result = fwd::detail::encode_result<std::string>(payload);
  boost::system::error_code ec;

  const double encode_args = ns_per_op([&] { sink += fwd::detail::encode_arguments(echo, payload).size(); });
  const double decode_args = ns_per_op([&] {
    sink += std::get<0>(fwd::detail::decode_arguments<std::decay_t<decltype(echo)>>(args, ec)).size();
  });
  const double encode_result = ns_per_op([&] { sink += fwd::detail::encode_result<std::string>(payload).size(); });
  const double decode_result = ns_per_op([&] { sink += fwd::detail::decode_result<std::string>(result, ec).size(); });
  if (ec) die("fwd codec: " + ec.message());

  // refs=1: the facet is owned here, not by the locale, as Boost's member facet is.
  struct owned_facet : std::numpunct<char> {
    owned_facet() : std::numpunct<char>(1) {}
  };
  static owned_facet facet;
  const double locale = ns_per_op([&] {
    std::locale with_facet(std::locale(), &facet);
    sink += with_facet.name().size();
  });
  const double copy = ns_per_op([&] {
    std::string c = payload;
    sink += c.size();
  });

  emit("rpc.codec_ns.encode_args", encode_args, 0);
  emit("rpc.codec_ns.decode_args", decode_args, 0);
  emit("rpc.codec_ns.encode_result", encode_result, 0);
  emit("rpc.codec_ns.decode_result", decode_result, 0);
  emit("rpc.codec_ns.per_call", encode_args + decode_args + encode_result + decode_result, 0);
  emit("rpc.codec_ns.locale_with_facet", locale, 0);
  emit("rpc.codec_ns.string_copy", copy, 0);
  std::fprintf(stderr, "fwd codec: done (%zu)\n", sink);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  try {
    if (mode == "run") return run();
  } catch (const std::exception& e) {
    die(std::string("fwd codec: ") + e.what());
  }
  std::fprintf(stderr, "usage: %s run\n", argv[0]);
  return 2;
}
