#include "planner/calibration.h"

#include <cmath>

#include "planner/core/error.h"
#include "planner/core/file_io.h"

namespace ferry::planner {
namespace {

using nlohmann::json;

// A number at `key` of `obj`: finite and positive, or >= 0 when `zero_ok`.
double number(const json& obj, const char* key, const std::string& where, bool zero_ok = false) {
  FERRY_CHECK(obj.contains(key), "{}: missing \"{}\"", where, key);
  const json& v = obj.at(key);
  FERRY_CHECK(v.is_number(), "{}: \"{}\" must be a number", where, key);
  const double x = v.get<double>();
  FERRY_CHECK(std::isfinite(x) && (zero_ok ? x >= 0 : x > 0), "{}: \"{}\" must be {}, got {}", where, key,
              zero_ok ? "zero or more" : "positive", x);
  return x;
}

const json& object(const json& obj, const char* key, const std::string& where) {
  FERRY_CHECK(obj.contains(key) && obj.at(key).is_object(), "{}: missing object \"{}\"", where, key);
  return obj.at(key);
}

}  // namespace

CalibrationFile read_calibration(const std::filesystem::path& path) {
  const std::string where = "calibration file " + path.string();
  json j;
  try {
    j = json::parse(core::read_text_file(path));
  } catch (const json::exception& e) {
    FERRY_THROW("{}: not JSON ({})", where, e.what());
  }
  FERRY_CHECK(j.is_object() && j.value("schema", "") == "ferry.calibration", "{}: not a ferry.calibration file", where);
  FERRY_CHECK(j.value("version", 0) == kCalibrationVersion, "{}: version {} (this ferry reads version {})", where,
              j.value("version", 0), kCalibrationVersion);
  CalibrationFile f;
  f.machine = j.value("machine", "");
  f.threads = j.value("threads", 0);
  const json& r = object(j, "rates", where);
  Calibration& c = f.rates;
  c.source = path.string();
  c.triad = number(r, "triad_gbs", where) * 1e9;
  c.host_dense_bw = number(r, "host_dense_gbs", where) * 1e9;
  c.host_expert_bw = number(r, "host_expert_gbs", where) * 1e9;
  c.host_dense_flops = number(r, "host_dense_gflops", where) * 1e9;
  c.host_expert_flops = number(r, "host_expert_gflops", where) * 1e9;
  if (r.contains("link_gbs")) c.link_bw = number(r, "link_gbs", where, true) * 1e9;
  const json& m = object(j, "measured", where);
  FERRY_CHECK(m.contains("model") && m.at("model").is_string(), "{}: missing \"model\"", where);
  f.measured.model = m.at("model").get<std::string>();
  f.measured.ctx = static_cast<int64_t>(number(m, "ctx", where));
  f.measured.ubatch = static_cast<int64_t>(number(m, "ubatch", where));
  f.measured.decode_tok_s = number(m, "decode_tok_s", where);
  f.measured.prefill_tok_s = number(m, "prefill_tok_s", where);
  if (j.contains("phases_ms")) f.phases_ms = j.at("phases_ms");
  return f;
}

json calibration_to_json(const CalibrationFile& f) {
  const Calibration& c = f.rates;
  json rates = {{"triad_gbs", c.triad / 1e9},
                {"host_dense_gbs", c.host_dense_bw / 1e9},
                {"host_expert_gbs", c.host_expert_bw / 1e9},
                {"host_dense_gflops", c.host_dense_flops / 1e9},
                {"host_expert_gflops", c.host_expert_flops / 1e9}};
  if (c.link_bw > 0) rates["link_gbs"] = c.link_bw / 1e9;
  const CalibrationRun& m = f.measured;
  return {{"schema", "ferry.calibration"},
          {"version", kCalibrationVersion},
          {"machine", f.machine},
          {"threads", f.threads},
          {"rates", rates},
          {"measured",
           {{"model", m.model},
            {"ctx", m.ctx},
            {"ubatch", m.ubatch},
            {"decode_tok_s", m.decode_tok_s},
            {"prefill_tok_s", m.prefill_tok_s}}},
          {"phases_ms", f.phases_ms}};
}

}  // namespace ferry::planner
