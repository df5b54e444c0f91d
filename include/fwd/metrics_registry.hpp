#pragma once

// Metric families (counter, gauge, histogram) and a registry that renders them in
// Prometheus' text exposition format, version 0.0.4. fwd::metrics (metrics.hpp) builds
// fwd's own families on one registry; a service may add its own to it.
//
// Each family has its own mutex: an update holds it for one map lookup and an addition;
// render() copies a family's values under its mutex and formats them after releasing it.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fwd {


/// The Content-Type of metrics_registry::render()'s text.
inline constexpr const char* metrics_content_type = "text/plain; version=0.0.4; charset=utf-8";

namespace detail {

// A sample value as Prometheus reads it: integers without a fraction, +Inf/-Inf/NaN.
inline std::string metric_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

// A label value between double quotes: backslash, double quote and newline escaped.
inline void append_label_value(std::string& out, std::string_view value) {
  for (char c : value) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
}

// HELP text: backslash and newline escaped.
inline std::string help_text(std::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

// `{a="x",b="y"}` (plus `extra` such as `le="0.5"`), or nothing without labels.
inline std::string label_set(const std::vector<std::string>& names, const std::vector<std::string>& values,
                             std::string_view extra = {}) {
  if (names.empty() && extra.empty()) return {};
  std::string out = "{";
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i) out += ',';
    out += names[i];
    out += "=\"";
    append_label_value(out, i < values.size() ? values[i] : std::string());
    out += '"';
  }
  if (!extra.empty()) {
    if (!names.empty()) out += ',';
    out += extra;
  }
  out += '}';
  return out;
}

class metric_family {
 public:
  metric_family(std::string name, std::string help, std::vector<std::string> labels)
      : name_(std::move(name)), help_(std::move(help)), labels_(std::move(labels)) {}
  virtual ~metric_family() = default;
  metric_family(const metric_family&) = delete;
  metric_family& operator=(const metric_family&) = delete;

  const std::string& name() const noexcept { return name_; }
  virtual void render(std::string& out) const = 0;

 protected:
  void header(std::string& out, const char* type) const {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name_, help_text(help_), name_, type);
  }

  std::string name_;
  std::string help_;
  std::vector<std::string> labels_;
  mutable std::mutex mutex_;
};

}  // namespace detail

/// Label values, in the order of the family's label names.
using metric_labels = std::vector<std::string>;

namespace detail {

/// A family with one number per label set: what counters and gauges share.
class scalar_family : public metric_family {
 public:
  using metric_family::metric_family;

  void add(const metric_labels& labels, double by) {
    std::lock_guard lock(mutex_);
    values_[labels] += by;
  }
  double value(const metric_labels& labels = {}) const {
    std::lock_guard lock(mutex_);
    const auto it = values_.find(labels);
    return it == values_.end() ? 0 : it->second;
  }

 protected:
  void render_as(std::string& out, const char* type) const {
    std::map<metric_labels, double> copy;
    {
      std::lock_guard lock(mutex_);
      copy = values_;
    }
    header(out, type);
    for (const auto& [labels, v] : copy)
      out += fmt::format("{}{} {}\n", name_, label_set(labels_, labels), metric_number(v));
  }

  std::map<metric_labels, double> values_;
};

}  // namespace detail

/// A counter family: values only go up. Its name should end in `_total`.
class counter_family : public detail::scalar_family {
 public:
  using scalar_family::scalar_family;

  void add(const metric_labels& labels, double by = 1) { scalar_family::add(labels, by); }
  void inc(const metric_labels& labels = {}) { add(labels, 1); }
  void render(std::string& out) const override { render_as(out, "counter"); }
};

/// A gauge family: values go up and down.
class gauge_family : public detail::scalar_family {
 public:
  using scalar_family::scalar_family;

  void set(const metric_labels& labels, double v) {
    std::lock_guard lock(mutex_);
    values_[labels] = v;
  }
  void render(std::string& out) const override { render_as(out, "gauge"); }
};

/// A histogram family: observations counted in buckets by upper bound (`le`), rendered
/// cumulative with a final `+Inf` bucket, `_sum` and `_count`.
class histogram_family : public detail::metric_family {
 public:
  histogram_family(std::string name, std::string help, std::vector<std::string> labels,
                   std::vector<double> bounds)
      : metric_family(std::move(name), std::move(help), std::move(labels)), bounds_(std::move(bounds)) {
    std::sort(bounds_.begin(), bounds_.end());
    bounds_.erase(std::unique(bounds_.begin(), bounds_.end()), bounds_.end());
    if (!bounds_.empty() && std::isinf(bounds_.back())) bounds_.pop_back();  // +Inf is implicit
  }

  void observe(const metric_labels& labels, double v) {
    // The bucket is found before the lock is taken.
    const std::size_t bucket = static_cast<std::size_t>(
        std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
    std::lock_guard lock(mutex_);
    series& s = values_[labels];
    if (s.buckets.empty()) s.buckets.assign(bounds_.size() + 1, 0);
    ++s.buckets[bucket];
    s.sum += v;
    ++s.count;
  }
  /// Observations so far for these labels.
  std::uint64_t count(const metric_labels& labels = {}) const {
    std::lock_guard lock(mutex_);
    const auto it = values_.find(labels);
    return it == values_.end() ? 0 : it->second.count;
  }

  void render(std::string& out) const override {
    std::map<metric_labels, series> copy;
    {
      std::lock_guard lock(mutex_);
      copy = values_;
    }
    header(out, "histogram");
    for (const auto& [labels, s] : copy) {
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i <= bounds_.size(); ++i) {
        cumulative += s.buckets[i];
        const std::string le =
            fmt::format("le=\"{}\"", i < bounds_.size() ? detail::metric_number(bounds_[i]) : "+Inf");
        out += fmt::format("{}_bucket{} {}\n", name_, detail::label_set(labels_, labels, le), cumulative);
      }
      const std::string set = detail::label_set(labels_, labels);
      out += fmt::format("{}_sum{} {}\n", name_, set, detail::metric_number(s.sum));
      out += fmt::format("{}_count{} {}\n", name_, set, s.count);
    }
  }

 private:
  struct series {
    std::vector<std::uint64_t> buckets;  // per bucket, not cumulative; the last is +Inf
    double sum = 0;
    std::uint64_t count = 0;
  };
  std::vector<double> bounds_;
  std::map<metric_labels, series> values_;
};

/// Families rendered together, in the order they were added.
class metrics_registry {
 public:
  metrics_registry() = default;
  metrics_registry(const metrics_registry&) = delete;
  metrics_registry& operator=(const metrics_registry&) = delete;

  counter_family& counter(std::string name, std::string help, std::vector<std::string> labels = {}) {
    return add<counter_family>(std::move(name), std::move(help), std::move(labels));
  }
  gauge_family& gauge(std::string name, std::string help, std::vector<std::string> labels = {}) {
    return add<gauge_family>(std::move(name), std::move(help), std::move(labels));
  }
  histogram_family& histogram(std::string name, std::string help, std::vector<std::string> labels,
                              std::vector<double> bounds) {
    return add<histogram_family>(std::move(name), std::move(help), std::move(labels), std::move(bounds));
  }

  /// Every family in the text exposition format (version 0.0.4).
  std::string render() const {
    std::vector<detail::metric_family*> families;
    {
      std::lock_guard lock(mutex_);
      for (const auto& f : families_) families.push_back(f.get());
    }
    std::string out;
    for (const auto* f : families) f->render(out);
    return out;
  }

 private:
  template <class Family, class... Args>
  Family& add(Args&&... args) {
    auto family = std::make_unique<Family>(std::forward<Args>(args)...);
    Family& ref = *family;
    std::lock_guard lock(mutex_);
    families_.push_back(std::move(family));
    return ref;
  }

  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<detail::metric_family>> families_;
};

}  // namespace fwd
