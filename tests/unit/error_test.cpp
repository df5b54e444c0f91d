#include <fwd/error.hpp>

#include <catch2/catch.hpp>

#include <set>
#include <string>
#include <system_error>

namespace {

constexpr fwd::errc all_errcs[] = {
    fwd::errc::no_primary,        fwd::errc::not_primary,      fwd::errc::unreachable,
    fwd::errc::connection_lost,   fwd::errc::timeout,          fwd::errc::cancelled,
    fwd::errc::remote_failure,    fwd::errc::unknown_procedure, fwd::errc::signature_mismatch,
    fwd::errc::protocol_error,    fwd::errc::frame_too_large,  fwd::errc::unauthenticated,
    fwd::errc::version_mismatch,  fwd::errc::overloaded,       fwd::errc::circuit_open,
    fwd::errc::replication_lag,   fwd::errc::not_litefs,       fwd::errc::misconfigured_mount,
    fwd::errc::bad_litefs_file,   fwd::errc::bad_argument,     fwd::errc::commit_unknown,
    fwd::errc::not_yet_durable,
    fwd::errc::tampered_frame,
    fwd::errc::not_confirmed,
};

}  // namespace

TEST_CASE("fwd::errc converts to std::error_code and boost::system::error_code alike") {
  std::error_code std_ec = fwd::errc::timeout;
  boost::system::error_code boost_ec = fwd::errc::timeout;
  CHECK(std_ec == fwd::errc::timeout);
  CHECK(boost_ec == fwd::errc::timeout);
  CHECK(std::string(std_ec.category().name()) == "fwd");
  CHECK(std::string(boost_ec.category().name()) == "fwd");
  // Round trips keep the value and the category.
  const std::error_code from_boost = boost_ec;
  const boost::system::error_code from_std = std_ec;
  CHECK(from_boost == fwd::errc::timeout);
  CHECK(from_std == fwd::errc::timeout);
  CHECK(from_std != fwd::errc::cancelled);
}

TEST_CASE("every fwd::errc has a distinct message that says what to do") {
  std::set<std::string> messages;
  for (auto e : all_errcs) {
    const std::string m = make_error_code(e).message();
    INFO(m);
    CHECK(m.size() > 40);
    CHECK(m.find(':') != std::string::npos);  // "what happened: what to do"
    messages.insert(m);
  }
  CHECK(messages.size() == std::size(all_errcs));
}

TEST_CASE("classification: not sent, maybe executed, permanent") {
  using fwd::error_class;
  CHECK(fwd::classify(fwd::errc::no_primary) == error_class::not_sent);
  CHECK(fwd::classify(fwd::errc::not_primary) == error_class::not_sent);
  CHECK(fwd::classify(fwd::errc::unreachable) == error_class::not_sent);
  CHECK(fwd::classify(fwd::errc::overloaded) == error_class::not_sent);
  CHECK(fwd::classify(fwd::errc::circuit_open) == error_class::not_sent);
  CHECK(fwd::classify(fwd::errc::timeout) == error_class::maybe_executed);
  CHECK(fwd::classify(fwd::errc::connection_lost) == error_class::maybe_executed);
  CHECK(fwd::classify(fwd::errc::cancelled) == error_class::maybe_executed);
  CHECK(fwd::classify(fwd::errc::commit_unknown) == error_class::maybe_executed);
  CHECK(fwd::classify(fwd::errc::not_yet_durable) == error_class::committed_not_durable);
  CHECK(std::string(fwd::to_string(error_class::committed_not_durable)) == "committed, not yet durable");
  CHECK(fwd::classify(fwd::errc::remote_failure) == error_class::permanent);
  CHECK(fwd::classify(fwd::errc::unknown_procedure) == error_class::permanent);
  CHECK(fwd::classify(fwd::errc::signature_mismatch) == error_class::permanent);
  CHECK(fwd::classify(fwd::errc::unauthenticated) == error_class::permanent);
  CHECK(fwd::classify(fwd::errc::version_mismatch) == error_class::permanent);
  // Committed on the primary, not confirmed here: a retry with the same request id is safe.
  CHECK(fwd::classify(fwd::errc::replication_lag) == error_class::unconfirmed);
  CHECK(fwd::classify(fwd::errc::not_confirmed) == error_class::unconfirmed);
  CHECK(fwd::make_error_code(fwd::errc::replication_lag).message().find("do not retry") == std::string::npos);
  CHECK(fwd::make_error_code(fwd::errc::not_confirmed).message().find("same request id is safe") !=
        std::string::npos);
  CHECK(fwd::classify(fwd::errc::not_litefs) == error_class::permanent);
  // The classification is the same whichever error_code type carries the error.
  for (auto e : all_errcs) {
    const std::error_code s = e;
    const boost::system::error_code b = e;
    CHECK(fwd::classify(s) == fwd::classify(b));
    CHECK(fwd::classify(e) == fwd::classify(b));
  }
  CHECK(std::string(fwd::to_string(error_class::maybe_executed)) == "maybe executed");
  CHECK(std::string(fwd::to_string(error_class::unconfirmed)) == "unconfirmed");
}

TEST_CASE("socket errors are classified by whether the request could have left") {
  using fwd::error_class;
  CHECK(fwd::classify(std::make_error_code(std::errc::connection_refused)) == error_class::not_sent);
  CHECK(fwd::classify(std::make_error_code(std::errc::network_unreachable)) ==
        error_class::not_sent);
  CHECK(fwd::classify(std::make_error_code(std::errc::connection_reset)) ==
        error_class::maybe_executed);
  CHECK(fwd::classify(std::make_error_code(std::errc::broken_pipe)) ==
        error_class::maybe_executed);
  CHECK(fwd::classify(std::make_error_code(std::errc::invalid_argument)) ==
        error_class::permanent);
}

TEST_CASE("SQLite errors keep SQLite's extended code") {
  const auto unique = fwd::make_sqlite_error(2067);  // SQLITE_CONSTRAINT_UNIQUE
  CHECK(unique.value() == 2067);
  CHECK(std::string(unique.category().name()) == "fwd.sqlite");
  CHECK(unique.message().find("SQLITE_CONSTRAINT") != std::string::npos);
  CHECK(unique.message().find("2067") != std::string::npos);
  CHECK(fwd::classify(unique) == fwd::error_class::permanent);
  // Busy and locked roll the transaction back: nothing was applied.
  CHECK(fwd::classify(fwd::make_sqlite_error(5)) == fwd::error_class::not_sent);
  CHECK(fwd::classify(fwd::make_sqlite_error(517)) == fwd::error_class::not_sent);  // BUSY_SNAPSHOT
  // What LiteFS's replicas answer: readonly (1544) and I/O error (778).
  CHECK(fwd::make_sqlite_error(1544).message().find("replica") != std::string::npos);
  CHECK(fwd::make_sqlite_error(778).message().find("replica") != std::string::npos);
  const std::error_code as_std = unique;
  CHECK(as_std.value() == 2067);
  CHECK(fwd::classify(as_std) == fwd::error_class::permanent);
}

TEST_CASE("fwd::error is a std::system_error that carries the code and its class") {
  try {
    throw fwd::error(fwd::errc::not_primary, "write to node b");
  } catch (const std::system_error& e) {
    CHECK(e.code() == fwd::errc::not_primary);
    CHECK(std::string(e.what()).find("write to node b") != std::string::npos);
    CHECK(std::string(e.what()).find("not the primary") != std::string::npos);
    const auto* fe = dynamic_cast<const fwd::error*>(&e);
    REQUIRE(fe != nullptr);
    CHECK(fe->classification() == fwd::error_class::not_sent);
  }
}
