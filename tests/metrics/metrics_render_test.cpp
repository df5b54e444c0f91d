// fwd::metrics_registry's text exposition format, and fwd::metrics fed by telemetry events.

#include <catch2/catch.hpp>
#include <fwd/metrics.hpp>

#include <memory>
#include <string>

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("a small registry renders exactly in the text format 0.0.4", "[metrics]") {
  fwd::metrics_registry r;
  auto& calls = r.counter("app_calls_total", "Calls made.", {"procedure", "outcome"});
  auto& depth = r.gauge("app_queue_depth", "Queued work.");
  auto& latency = r.histogram("app_latency_seconds", "Latency.", {"procedure"}, {0.5, 0.1, 1});
  calls.inc({"put", "ok"});
  calls.add({"put", "ok"}, 2);
  calls.inc({"get", "timeout"});
  depth.set({}, 7);
  latency.observe({"put"}, 0.05);
  latency.observe({"put"}, 0.1);  // on a bound: counted in that bucket (le is inclusive)
  latency.observe({"put"}, 0.3);
  latency.observe({"put"}, 4);
  CHECK(r.render() ==
        "# HELP app_calls_total Calls made.\n"
        "# TYPE app_calls_total counter\n"
        "app_calls_total{procedure=\"get\",outcome=\"timeout\"} 1\n"
        "app_calls_total{procedure=\"put\",outcome=\"ok\"} 3\n"
        "# HELP app_queue_depth Queued work.\n"
        "# TYPE app_queue_depth gauge\n"
        "app_queue_depth 7\n"
        "# HELP app_latency_seconds Latency.\n"
        "# TYPE app_latency_seconds histogram\n"
        "app_latency_seconds_bucket{procedure=\"put\",le=\"0.1\"} 2\n"
        "app_latency_seconds_bucket{procedure=\"put\",le=\"0.5\"} 3\n"
        "app_latency_seconds_bucket{procedure=\"put\",le=\"1\"} 3\n"
        "app_latency_seconds_bucket{procedure=\"put\",le=\"+Inf\"} 4\n"
        "app_latency_seconds_sum{procedure=\"put\"} 4.45\n"
        "app_latency_seconds_count{procedure=\"put\"} 4\n");
}

TEST_CASE("label values and help text are escaped", "[metrics]") {
  fwd::metrics_registry r;
  auto& c = r.counter("x_total", "Back\\slash and\nnewline; \"quotes\" stay.", {"v"});
  c.inc({"a\\b\"c\nd"});
  CHECK(r.render() ==
        "# HELP x_total Back\\\\slash and\\nnewline; \"quotes\" stay.\n"
        "# TYPE x_total counter\n"
        "x_total{v=\"a\\\\b\\\"c\\nd\"} 1\n");
}

TEST_CASE("histogram buckets are cumulative and end with +Inf", "[metrics]") {
  fwd::metrics_registry r;
  auto& h = r.histogram("h_seconds", "H.", {}, {1, 2, 3, std::numeric_limits<double>::infinity()});
  for (double v : {0.5, 1.5, 1.7, 2.5, 2.9, 2.95, 10.0}) h.observe({}, v);
  const std::string text = r.render();
  CHECK(contains(text, "h_seconds_bucket{le=\"1\"} 1\n"));
  CHECK(contains(text, "h_seconds_bucket{le=\"2\"} 3\n"));
  CHECK(contains(text, "h_seconds_bucket{le=\"3\"} 6\n"));
  CHECK(contains(text, "h_seconds_bucket{le=\"+Inf\"} 7\n"));
  CHECK(!contains(text, "le=\"inf\""));  // an explicit +Inf bound is not repeated
  CHECK(contains(text, "h_seconds_sum 22.05\n"));
  CHECK(contains(text, "h_seconds_count 7\n"));
  CHECK(h.count() == 7);
}

TEST_CASE("special values render as Prometheus reads them", "[metrics]") {
  CHECK(fwd::detail::metric_number(3) == "3");
  CHECK(fwd::detail::metric_number(0.25) == "0.25");
  CHECK(fwd::detail::metric_number(std::numeric_limits<double>::infinity()) == "+Inf");
  CHECK(fwd::detail::metric_number(-std::numeric_limits<double>::infinity()) == "-Inf");
  CHECK(fwd::detail::metric_number(std::nan("")) == "NaN");
}

TEST_CASE("outcome labels are few-valued names", "[metrics]") {
  CHECK(fwd::outcome_label({}) == "ok");
  CHECK(fwd::outcome_label(fwd::make_error_code(fwd::errc::not_primary)) == "not_primary");
  CHECK(fwd::outcome_label(fwd::make_sqlite_error(2067)) == "sqlite");
  CHECK(fwd::outcome_label(boost::asio::error::eof) == "eof");
  CHECK(fwd::outcome_label(boost::system::errc::make_error_code(
            boost::system::errc::connection_refused)) == "connection_refused");
}

TEST_CASE("fwd::metrics counts telemetry events and forwards them", "[metrics]") {
  auto m = std::make_shared<fwd::metrics>();
  auto mine = std::make_shared<fwd::telemetry>();
  int retries_seen = 0, started_seen = 0;
  mine->retry = [&](const fwd::retry_event&) { ++retries_seen; };
  mine->call_started = [&](const fwd::call_started_event&) { ++started_seen; };
  const fwd::telemetry_ptr t = m->hooks(mine);

  fwd::detail::emit(t, &fwd::telemetry::call_started, fwd::call_started_event{"p", {}, 1});
  fwd::detail::emit(t, &fwd::telemetry::retry,
                    fwd::retry_event{"app.put", 2, {}, fwd::make_error_code(fwd::errc::no_primary)});
  fwd::detail::emit(t, &fwd::telemetry::call_finished,
                    fwd::call_finished_event{"app.put", "127.0.0.1:7001", 1,
                                             std::chrono::milliseconds(3), {}});
  fwd::write_finished_event w{"app.put", true, 2, std::chrono::milliseconds(20), {}, true,
                              std::chrono::milliseconds(2)};
  fwd::detail::emit(t, &fwd::telemetry::write_finished, w);
  w.forwarded = false;
  w.waited_for_replication = false;
  fwd::detail::emit(t, &fwd::telemetry::write_finished, w);
  fwd::detail::emit(t, &fwd::telemetry::member_joined, fwd::member_event{"a"});
  fwd::detail::emit(t, &fwd::telemetry::member_joined, fwd::member_event{"b"});
  fwd::detail::emit(t, &fwd::telemetry::member_left, fwd::member_event{"a"});
  fwd::detail::emit(t, &fwd::telemetry::breaker_changed, fwd::breaker_event{"10.0.0.1:7001", "open"});
  fwd::detail::emit(t, &fwd::telemetry::breaker_changed,
                    fwd::breaker_event{"10.0.0.1:7001", "half-open"});
  fwd::detail::emit(t, &fwd::telemetry::litefs_changed,
                    fwd::litefs_event{"replica", "node-a", false, 1, 42, "position"});
  fwd::detail::emit(t, &fwd::telemetry::litefs_changed,
                    fwd::litefs_event{"primary", "", false, 1, 43, "lease"});
  fwd::detail::emit(t, &fwd::telemetry::litefs_changed,
                    fwd::litefs_event{"primary", "", false, 1, 44, "position"});  // not a change
  fwd::detail::emit(t, &fwd::telemetry::write_batch, fwd::write_batch_event{5, 3});
  fwd::detail::emit(t, &fwd::telemetry::connection_failed,
                    fwd::connection_event{"127.0.0.1:5555", fwd::make_error_code(fwd::errc::unauthenticated), true});
  fwd::detail::emit(t, &fwd::telemetry::primary_changed, fwd::primary_changed_event{"", "local"});

  CHECK(retries_seen == 1);
  CHECK(started_seen == 1);
  const std::string text = m->render();
  CHECK(contains(text, "fwd_retries_total{procedure=\"app.put\",reason=\"no_primary\"} 1\n"));
  CHECK(contains(text,
                 "fwd_rpc_call_duration_seconds_count{procedure=\"app.put\",outcome=\"ok\",target=\"remote\"} 1\n"));
  CHECK(contains(text, "fwd_writes_total{path=\"forwarded\"} 1\n"));
  CHECK(contains(text, "fwd_writes_total{path=\"local\"} 1\n"));
  CHECK(contains(text, "fwd_replication_wait_seconds_count{outcome=\"ok\"} 1\n"));
  CHECK(contains(text, "fwd_replication_wait_seconds_sum{outcome=\"ok\"} 0.002\n"));
  CHECK(contains(text, "fwd_cluster_members 1\n"));
  CHECK(!contains(text, "fwd_breakers{state=\"closed\"}"));
  CHECK(contains(text, "fwd_breakers{state=\"half-open\"} 1\n"));
  CHECK(contains(text, "fwd_breakers{state=\"open\"} 0\n"));
  CHECK(contains(text, "fwd_litefs_role{role=\"primary\"} 1\n"));
  CHECK(contains(text, "fwd_litefs_role{role=\"replica\"} 0\n"));
  CHECK(contains(text, "fwd_litefs_state_changes_total{role=\"primary\"} 1\n"));
  CHECK(contains(text, "fwd_litefs_state_changes_total{role=\"replica\"} 1\n"));
  CHECK(contains(text, "fwd_litefs_txid 44\n"));
  CHECK(contains(text, "fwd_writer_queue_depth 3\n"));
  CHECK(contains(text, "fwd_writer_batch_size_bucket{le=\"4\"} 0\n"));
  CHECK(contains(text, "fwd_writer_batch_size_bucket{le=\"8\"} 1\n"));
  CHECK(contains(text, "fwd_rpc_connections_refused_total{reason=\"unauthenticated\"} 1\n"));
  CHECK(contains(text, "fwd_primary_changes_total 1\n"));
  CHECK(contains(text, "fwd_primary_known 1\n"));
  CHECK(!contains(text, "10.0.0.1"));     // no addresses in labels
  CHECK(!contains(text, "127.0.0.1"));
}
