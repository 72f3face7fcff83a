//===- viz_trace.cpp - the measured timeline of one step in the plan viewer -===//
//
// See viz_trace.h. nlohmann-json reads the trace (the format runtime/train/trace.cpp writes).
//
//===----------------------------------------------------------------------===//
#include "tools/lora-compile/viz_trace.h"
#include "tools/lora-compile/viz.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

namespace parallora::viz {
namespace {

using json = nlohmann::json;

std::string pct(double x) { return fmt("%.1f", 100.0 * x) + "%"; }
std::string exact(double x) { return fmt("%.17g", x); }

bool is_backward_op(const std::string &op) { return op.find("_bwd") != std::string::npos || op == "accumulate"; }

// A number field of an object, or `dflt`.
double num(const json &o, const char *key, double dflt = 0) {
  auto it = o.find(key);
  return it != o.end() && it->is_number() ? it->get<double>() : dflt;
}
int64_t integer(const json &o, const char *key, int64_t dflt = -1) {
  auto it = o.find(key);
  return it != o.end() && it->is_number_integer() ? it->get<int64_t>() : dflt;
}
std::string str(const json &o, const char *key) {
  auto it = o.find(key);
  return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
}

const char *lane_name(Lane l) {
  switch (l) {
  case Lane::Program: return "program";
  case Lane::Compute: return "compute";
  case Lane::Comm: return "comm";
  case Lane::Idle: return "idle";
  case Lane::Bucket: return "bucket";
  }
  return "?";
}

// Tooltip of an event: its name, duration and args.
std::string tip_of(const json &e, double dur) {
  std::string t = str(e, "name") + "  " + fmt("%.1f", dur) + " us";
  auto a = e.find("args");
  if (a != e.end() && a->is_object())
    for (auto it = a->begin(); it != a->end(); ++it) {
      if (it.key() == "step") continue;
      t += "\n" + it.key() + " " + (it->is_string() ? it->get<std::string>() : it->dump());
    }
  return t;
}

} // namespace

std::optional<double> formula_bubble(const std::string &schedule, int p, int64_t m) {
  if (p <= 1) return 0.0;
  if (m < 1) return std::nullopt;
  if (schedule == "gpipe" || schedule == "1f1b") return double(p - 1) / double(m + p - 1);
  return std::nullopt;
}

Status load_measured_step(const std::string &path, int64_t want, const plan::Plan &plan, MeasuredStep *out) {
  auto err = [&](const std::string &msg) { return Status::error("--viz-trace " + path + ": " + msg); };
  std::ifstream f(path, std::ios::binary);
  if (!f) return err("cannot open the file");
  json t = json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (t.is_discarded()) return err("not JSON (a lora-run --trace file is one JSON object; truncated?)");
  if (!t.is_object() || !t.contains("traceEvents") || !t["traceEvents"].is_array())
    return err("not a Chrome trace (no \"traceEvents\" array); write one with lora-run --trace");
  const json &ev = t["traceEvents"];
  const json other = t.contains("otherData") && t["otherData"].is_object() ? t["otherData"] : json::object();

  // Processes (ranks) and step spans.
  std::map<int, std::string> names;
  std::map<int64_t, std::map<int, std::pair<double, double>>> steps;  // step -> rank -> (ts, dur)
  for (const json &e : ev) {
    if (!e.is_object()) return err("an entry of \"traceEvents\" is not an object");
    const std::string ph = str(e, "ph");
    const int pid = static_cast<int>(integer(e, "pid", -1));
    if (ph == "M" && str(e, "name") == "process_name" && e.contains("args") && e["args"].is_object())
      names[pid] = str(e["args"], "name");
    if (ph == "X" && str(e, "cat") == "step" && e.contains("args") && e["args"].is_object()) {
      const int64_t s = integer(e["args"], "step");
      const double ts = num(e, "ts"), dur = num(e, "dur");
      steps[s][pid] = {ts, dur};
    }
  }
  const int W = static_cast<int>(plan.ranks.size());
  if (names.empty()) return err("no process names (\"ph\":\"M\" process_name); not a lora-run --trace file");
  if (static_cast<int>(names.size()) != W || names.begin()->first != 0 || names.rbegin()->first != W - 1) {
    std::string mesh;
    if (other.contains("mesh") && other["mesh"].is_object())
      mesh = " (dp " + std::to_string(integer(other["mesh"], "dp")) + " x tp " + std::to_string(integer(other["mesh"], "tp")) +
             " x pp " + std::to_string(integer(other["mesh"], "pp")) + ")";
    return err("a trace of " + std::to_string(names.size()) + " ranks" + mesh + ", but the plan has " + std::to_string(W) +
               " (dp " + std::to_string(plan.mesh.dp) + " x tp " + std::to_string(plan.mesh.tp) + " x pp " +
               std::to_string(plan.mesh.pp) + "): give the trace of a run of this plan");
  }
  if (other.contains("mesh") && other["mesh"].is_object()) {
    const json &m = other["mesh"];
    if (integer(m, "dp") != plan.mesh.dp || integer(m, "tp") != plan.mesh.tp || integer(m, "pp") != plan.mesh.pp)
      return err("a trace of mesh dp " + std::to_string(integer(m, "dp")) + " x tp " + std::to_string(integer(m, "tp")) +
                 " x pp " + std::to_string(integer(m, "pp")) + ", but the plan's is dp " + std::to_string(plan.mesh.dp) +
                 " x tp " + std::to_string(plan.mesh.tp) + " x pp " + std::to_string(plan.mesh.pp));
  }
  if (steps.empty()) return err("no step spans (the run stopped before its first step?)");

  MeasuredStep m;
  m.path = path;
  for (auto &[s, _] : steps) m.steps.push_back(s);
  if (want >= 0) {
    if (!steps.count(want)) {
      std::string have;
      for (int64_t s : m.steps) have += (have.empty() ? "" : ", ") + std::to_string(s);
      return Status::error("--viz-step " + std::to_string(want) + ": not in " + path + " (its steps: " + have + ")");
    }
    m.step = want;
  } else {
    // The median step on rank 0 (by duration), the first one excluded when there are several.
    std::vector<std::pair<double, int64_t>> cand;
    for (size_t i = m.steps.size() > 1 ? 1 : 0; i < m.steps.size(); ++i) {
      const auto &by_rank = steps[m.steps[i]];
      auto r0 = by_rank.find(0);
      cand.push_back({r0 == by_rank.end() ? 0.0 : r0->second.second, m.steps[i]});
    }
    std::stable_sort(cand.begin(), cand.end(), [](auto &a, auto &b) { return a.first < b.first; });
    m.step = cand[cand.size() / 2].second;
  }
  const auto &spans = steps[m.step];
  m.lo = 1e300;
  m.hi = -1e300;
  for (auto &[r, sp] : spans) {
    m.lo = std::min(m.lo, sp.first);
    m.hi = std::max(m.hi, sp.first + sp.second);
  }
  m.clock_error_us = num(other, "clock_error_us_max", -1);

  m.ranks.resize(W);
  for (int r = 0; r < W; ++r) {
    MeasuredRank &mr = m.ranks[r];
    mr.rank = r;
    mr.name = names[r];
    auto sp = spans.find(r);
    if (sp == spans.end()) return err("rank " + std::to_string(r) + " has no span of step " + std::to_string(m.step));
    mr.step_ts = sp->second.first;
    mr.step_dur = sp->second.second;
  }
  // The events of each rank that begin inside its span of the step.
  for (const json &e : ev) {
    if (str(e, "ph") != "X") continue;
    const int pid = static_cast<int>(integer(e, "pid", -1));
    if (pid < 0 || pid >= W) continue;
    MeasuredRank &mr = m.ranks[pid];
    const double ts = num(e, "ts"), dur = num(e, "dur");
    if (ts < mr.step_ts || ts > mr.step_ts + mr.step_dur) continue;
    const int64_t tid = integer(e, "tid");
    const std::string cat = str(e, "cat");
    MeasuredEvent me;
    if (tid == 0 && cat == "program") me.lane = Lane::Program;
    else if (tid == 1) me.lane = Lane::Compute;
    else if (tid == 2) me.lane = Lane::Comm;
    else if (tid == 3) me.lane = Lane::Idle;
    else continue;
    me.ts = ts;
    me.dur = dur;
    me.name = str(e, "name");
    const json args = e.contains("args") && e["args"].is_object() ? e["args"] : json::object();
    me.program = me.lane == Lane::Program ? me.name : str(args, "program");
    me.micro_batch = static_cast<int>(integer(args, "micro_batch"));
    me.optimizer = me.program == "optimizer_step";
    // "backward", "backward_weight" (zb-h1), "backward.c1" (interleaved).
    me.backward = me.program.rfind("backward", 0) == 0 || (me.lane == Lane::Compute && me.program == "micro_step" && is_backward_op(me.name));
    me.tip = tip_of(e, dur);
    if (me.lane == Lane::Compute) mr.compute_us += dur;
    if (me.lane == Lane::Comm) mr.comm_us += dur;
    mr.events.push_back(std::move(me));
  }
  for (MeasuredRank &mr : m.ranks) mr.idle_us = std::max(0.0, mr.step_dur - mr.compute_us - mr.comm_us);
  // Gradient buckets in flight: async "b" / "e" pairs (by pid and id) beginning inside the step.
  std::map<std::pair<int, std::string>, const json *> begins;
  for (const json &e : ev) {
    const std::string ph = str(e, "ph");
    if (ph != "b" && ph != "e") continue;
    const int pid = static_cast<int>(integer(e, "pid", -1));
    const std::pair<int, std::string> key{pid, e.contains("id") ? e["id"].dump() : std::string()};
    if (ph == "b") {
      begins[key] = &e;
      continue;
    }
    auto b = begins.find(key);
    if (b == begins.end() || pid < 0 || pid >= W) continue;
    const json &be = *b->second;
    begins.erase(b);
    MeasuredRank &mr = m.ranks[pid];
    const double ts = num(be, "ts"), end = num(e, "ts");
    if (ts < mr.step_ts || ts > mr.step_ts + mr.step_dur) continue;
    MeasuredEvent me;
    me.lane = Lane::Bucket;
    me.ts = ts;
    me.dur = std::max(0.0, end - ts);
    me.name = str(be, "name");
    me.program = str(be, "cat");  // bucket_in_flight (host start .. wait) or bucket_device (NCCL stream)
    me.tip = me.name + "  " + fmt("%.1f", me.dur) + " us";
    mr.events.push_back(std::move(me));
    m.has_buckets = true;
  }
  // The whole run, from the summary lora-run printed.
  if (other.contains("summary") && other["summary"].is_object() && other["summary"].contains("ranks") &&
      other["summary"]["ranks"].is_array()) {
    const json &rs = other["summary"]["ranks"];
    for (int r = 0; r < W && r < static_cast<int>(rs.size()); ++r) {
      const json &x = rs[r];
      if (!x.is_object() || !x.contains("compute_fraction") || !x["compute_fraction"].is_number()) continue;
      MeasuredRank &mr = m.ranks[r];
      mr.has_run = true;
      mr.run_compute = num(x, "compute_fraction");
      mr.run_hidden = num(x, "hidden_comm_fraction");
      mr.run_exposed = num(x, "exposed_comm_fraction");
      mr.run_idle = num(x, "idle_fraction");
    }
  }
  *out = std::move(m);
  return Status::ok();
}

std::string measured_svg(const MeasuredStep &m) {
  const char *kFwd = "#4e79a7", *kBwd = "#e8853a", *kOpt = "#59a14f", *kComm = "#d7263d", *kIdle = "#bdbdbd",
             *kMicro = "#7d6fa8";
  const double left = 230, plot_w = 820, right = 120, top = 58;
  // Lanes top to bottom: programs, compute, comm, buckets (only when some), idle.
  const double lane_h[5] = {18, 14, 14, 10, m.has_buckets ? 10.0 : 0.0}, lane_gap = 2, rank_gap = 14;
  const int order[5] = {0, 1, 2, 4, 3};
  double rank_h = 0;
  for (double h : lane_h) rank_h += h > 0 ? h + lane_gap : 0;
  const int R = static_cast<int>(m.ranks.size());
  const double plot_h = R * rank_h + (R - 1) * rank_gap;
  const double width = left + plot_w + right, height = top + plot_h + 56;
  const double span = std::max(m.hi - m.lo, 1e-9);
  auto X = [&](double t) { return left + (t - m.lo) / span * plot_w; };
  auto colour = [&](const MeasuredEvent &e) {
    switch (e.lane) {
    case Lane::Comm: return kComm;
    case Lane::Idle: return kIdle;
    case Lane::Bucket: return e.program == "bucket_device" ? "#7b4fa0" : "#f1a6b0";
    default:
      if (e.lane == Lane::Program && e.program == "micro_step") return kMicro;  // forward + backward
      return e.optimizer ? kOpt : e.backward ? kBwd : kFwd;
    }
  };
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"measured\" data-step=\"" << m.step << "\" width=\"" << width << "\" height=\"" << height
     << "\" viewBox=\"0 0 " << width << " " << height << "\" font-family=\"Helvetica, Arial, sans-serif\">\n"
     << "<text x=\"" << left << "\" y=\"20\" font-size=\"15\" font-weight=\"bold\">measured: step " << m.step << " of "
     << xml_escape(m.path) << "</text>\n";
  double lx = left;
  std::vector<std::pair<const char *, const char *>> legend = {
      {kFwd, "forward"}, {kBwd, "backward"}, {kOpt, "optimizer"}, {kComm, "communication (blocked)"}, {kIdle, "idle"}};
  bool micro = false;
  for (const MeasuredRank &mr : m.ranks)
    for (const MeasuredEvent &e : mr.events) micro = micro || (e.lane == Lane::Program && e.program == "micro_step");
  if (micro) legend.insert(legend.begin(), {kMicro, "micro-step (forward + backward)"});
  if (m.has_buckets) legend.push_back({"#f1a6b0", "bucket in flight (purple: on the device)"});
  for (const auto &[c, text] : legend) {
    os << "<rect x=\"" << lx << "\" y=\"32\" width=\"14\" height=\"12\" fill=\"" << c << "\"/><text x=\"" << lx + 19
       << "\" y=\"42\" font-size=\"11\">" << text << "</text>\n";
    lx += 34 + 6.2 * std::string(text).size();
  }
  const char *lane_label[5] = {"programs", "compute", "comm", "idle", "buckets"};
  for (int r = 0; r < R; ++r) {
    const MeasuredRank &mr = m.ranks[r];
    const double y0 = top + r * (rank_h + rank_gap);
    double lane_y[5];
    double y = y0;
    for (int l : order) {
      lane_y[l] = y;
      if (lane_h[l] > 0) y += lane_h[l] + lane_gap;
    }
    os << "<g class=\"m-rank\" data-rank=\"" << r << "\" data-name=\"" << xml_escape(mr.name) << "\">\n"
       << "<text x=\"" << left - 62 << "\" y=\"" << y0 + 13 << "\" font-size=\"12\" text-anchor=\"end\">"
       << xml_escape(mr.name) << "</text>\n"
       << "<text x=\"" << left - 62 << "\" y=\"" << y0 + 28 << "\" font-size=\"10\" fill=\"#555555\" text-anchor=\"end\">"
       << "bubble " << pct(mr.step_bubble()) << " of its step</text>\n";
    for (int l : order)
      if (lane_h[l] > 0)
        os << "<text x=\"" << left - 6 << "\" y=\"" << lane_y[l] + lane_h[l] - 2 << "\" font-size=\"9\" fill=\"#777777\" "
         << "text-anchor=\"end\">" << lane_label[l] << "</text><rect x=\"" << left << "\" y=\"" << lane_y[l]
         << "\" width=\"" << plot_w << "\" height=\"" << lane_h[l] << "\" fill=\"#f6f6f6\"/>\n";
    // This rank's step span.
    os << "<rect x=\"" << fmt("%.2f", X(mr.step_ts)) << "\" y=\"" << y0 - 2 << "\" width=\""
       << fmt("%.2f", std::max(0.5, X(mr.step_ts + mr.step_dur) - X(mr.step_ts))) << "\" height=\"" << rank_h
       << "\" fill=\"none\" stroke=\"#999999\" stroke-dasharray=\"3 2\"><title>step " << m.step << ": "
       << fmt("%.1f", mr.step_dur) << " us</title></rect>\n";
    for (const MeasuredEvent &e : mr.events) {
      const int l = static_cast<int>(e.lane);
      const double x = X(e.ts), w = std::max(0.3, X(e.ts + e.dur) - x);
      os << "<rect class=\"m-ev\" data-rank=\"" << r << "\" data-lane=\"" << lane_name(e.lane) << "\" x=\"" << fmt("%.2f", x)
         << "\" y=\"" << lane_y[l] << "\" width=\"" << fmt("%.2f", w) << "\" height=\"" << lane_h[l] << "\" fill=\""
         << colour(e) << "\"" << (e.lane == Lane::Program ? " stroke=\"#ffffff\" stroke-width=\"1\"" : "")
         << (e.lane == Lane::Bucket ? " fill-opacity=\"0.7\"" : "") << "><title>"
         << xml_escape(e.tip) << "</title></rect>";
      if (e.lane == Lane::Program && e.micro_batch >= 0) {
        const std::string label = std::to_string(e.micro_batch);
        if (w >= 6.5 * label.size() + 4)
          os << "<text x=\"" << fmt("%.2f", x + w / 2) << "\" y=\"" << lane_y[l] + 13
             << "\" font-size=\"11\" fill=\"#ffffff\" text-anchor=\"middle\" pointer-events=\"none\">" << label << "</text>";
      }
      os << "\n";
    }
    os << "<text x=\"" << left + plot_w + 8 << "\" y=\"" << y0 + 13 << "\" font-size=\"11\" fill=\"#555555\">compute "
       << pct(mr.step_dur > 0 ? mr.compute_us / mr.step_dur : 0) << "</text>\n<text x=\"" << left + plot_w + 8 << "\" y=\""
       << y0 + 27 << "\" font-size=\"11\" fill=\"#555555\">comm " << pct(mr.step_dur > 0 ? mr.comm_us / mr.step_dur : 0)
       << "</text>\n<text x=\"" << left + plot_w + 8 << "\" y=\"" << y0 + 41 << "\" font-size=\"11\" fill=\"#555555\">idle "
       << pct(mr.step_dur > 0 ? mr.idle_us / mr.step_dur : 0) << "</text>\n</g>\n";
  }
  // Time axis (ms from the start of the window).
  const double ay = top + plot_h + 8;
  os << "<line x1=\"" << left << "\" y1=\"" << ay << "\" x2=\"" << left + plot_w << "\" y2=\"" << ay << "\" stroke=\"#444444\"/>\n";
  for (int i = 0; i <= 5; ++i) {
    const double t = span * i / 5;
    os << "<line x1=\"" << X(m.lo + t) << "\" y1=\"" << ay << "\" x2=\"" << X(m.lo + t) << "\" y2=\"" << ay + 5
       << "\" stroke=\"#444444\"/><text x=\"" << X(m.lo + t) << "\" y=\"" << ay + 18
       << "\" font-size=\"10\" text-anchor=\"middle\">" << fmt("%.3g", t / 1000.0) << "</text>\n";
  }
  os << "<text x=\"" << left + plot_w / 2 << "\" y=\"" << ay + 36
     << "\" font-size=\"11\" text-anchor=\"middle\" fill=\"#444444\">ms from the start of step " << m.step
     << " (every rank's clock aligned to rank 0's";
  if (m.clock_error_us >= 0) os << ", within " << fmt("%.1f", m.clock_error_us) << " us";
  os << ")</text>\n</svg>\n";
  return os.str();
}

std::string measured_html(const plan::Plan &plan, const MeasuredStep &m, const rt::Timeline *pipe) {
  std::ostringstream h;
  const int p = std::max(1, plan.mesh.pp);
  const std::optional<double> formula = formula_bubble(plan.pipeline_schedule, p, plan.micro_batches);
  h << "<h2 id=\"measured\">Measured timeline (step " << m.step << ")</h2>\n<p class=\"meta\">From <code>"
    << xml_escape(m.path) << "</code> (<code>lora-run --trace</code>): what each rank did in step " << m.step << " of ";
  for (size_t i = 0; i < m.steps.size(); ++i) h << (i ? ", " : "") << m.steps[i];
  h << ", on one time axis. Lanes per rank: the programs (forward / backward per micro-batch, the optimizer), "
       "the compute kernels, the time blocked in communication (send / recv / all-reduce, waiting for peers "
       "included) and the idle gaps. Hover a box for its kernel, bytes, layer. The bubble is the share of the "
       "rank's step span not spent in compute: exposed communication + idle.</p>\n";
  h << "<div class=\"fig\">\n" << measured_svg(m) << "</div>\n";
  h << "<table class=\"measured\">\n<tr><th>rank</th><th>stage</th><th>compute (step " << m.step
    << ")</th><th>comm (step " << m.step << ")</th><th>idle (step " << m.step << ")</th><th>bubble (step " << m.step
    << ")</th><th>bubble (whole run)</th><th>predicted bubble</th><th>formula";
  if (p > 1) h << " (p-1)/(m+p-1)";
  h << "</th></tr>\n";
  for (const MeasuredRank &mr : m.ranks) {
    const plan::RankPlan &rp = plan.ranks[mr.rank];
    double predicted = rp.bubble_fraction;
    if (pipe && rp.pp_stage >= 0 && rp.pp_stage < static_cast<int>(pipe->bubble.size())) predicted = pipe->bubble[rp.pp_stage];
    const double d = mr.step_dur > 0 ? mr.step_dur : 1;
    h << "<tr class=\"m-row\" data-rank=\"" << mr.rank << "\" data-stage=\"" << rp.pp_stage << "\" data-step-compute=\""
      << exact(mr.compute_us / d) << "\" data-step-comm=\"" << exact(mr.comm_us / d) << "\" data-step-idle=\""
      << exact(mr.idle_us / d) << "\" data-step-bubble=\"" << exact(mr.step_bubble()) << "\"";
    if (mr.has_run)
      h << " data-run-compute=\"" << exact(mr.run_compute) << "\" data-run-exposed=\"" << exact(mr.run_exposed)
        << "\" data-run-idle=\"" << exact(mr.run_idle) << "\" data-run-bubble=\"" << exact(mr.run_bubble()) << "\"";
    h << " data-predicted=\"" << exact(predicted) << "\"";
    if (formula) h << " data-formula=\"" << exact(*formula) << "\"";
    h << "><td class=\"l\">" << xml_escape(mr.name) << "</td><td>" << rp.pp_stage << "</td><td>" << pct(mr.compute_us / d)
      << "</td><td>" << pct(mr.comm_us / d) << "</td><td>" << pct(mr.idle_us / d) << "</td><td class=\"step-bubble\">"
      << pct(mr.step_bubble()) << "</td><td class=\"run-bubble\">" << (mr.has_run ? pct(mr.run_bubble()) : "&mdash;")
      << "</td><td>" << pct(predicted) << "</td><td>" << (formula ? pct(*formula) : "&mdash;") << "</td></tr>\n";
  }
  h << "</table>\n<p class=\"meta\">Whole run: the trace's summary (printed by lora-run and in summary.json "
       "<code>trace</code>), over every step. Predicted: ";
  if (p > 1)
    h << "the compiler's simulation of the " << xml_escape(plan.pipeline_schedule)
      << " schedule from each stage's FLOPs (the timeline above), which counts only forward and backward at equal "
         "device speed";
  else
    h << "no pipeline, so no bubble is predicted";
  h << "; the measured bubble also holds the transfers, waits for peers (the collectives), the optimizer's "
       "reductions and host work. "
       "docs/parallel.md \"The measured timeline in the viewer\" says how to read it.</p>\n";
  return h.str();
}

std::string viewer_script() {
  return "<script>\ndocument.addEventListener('DOMContentLoaded', function () {\n"
         "  if (location.hash === '#timelines') {  // only the title and the timelines\n"
         "    var keep = true;\n"
         "    Array.prototype.forEach.call(document.body.children, function (el) {\n"
         "      if (el.tagName === 'H2') keep = /timeline/i.test(el.textContent);\n"
         "      if (!keep && el.tagName !== 'SCRIPT') el.style.display = 'none';\n"
         "    });\n"
         "  }\n"
         "  document.body.setAttribute('data-height', Math.ceil(window.scrollY + document.body.getBoundingClientRect().bottom) + 24);\n"
         "});\n</script>\n";
}

} // namespace parallora::viz
