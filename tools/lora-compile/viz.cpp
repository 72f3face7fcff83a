//===- viz.cpp - pictures of a compiled plan (DOT, SVG, HTML) --------------===//
//
// Plain C++ over plan::Plan (no MLIR). See viz.h for what is written.
//
//===----------------------------------------------------------------------===//
#include "tools/lora-compile/viz.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>
#include <unistd.h>
#include <vector>

#include "runtime/plan/plan_schedule.h"
#include "runtime/plan/schedule.h"
#include "tools/lora-compile/viz_trace.h"

namespace parallora {
namespace viz {
std::string fmt(const char *f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string xml_escape(const std::string &s) {
  std::string r;
  for (char c : s) {
    switch (c) {
    case '&': r += "&amp;"; break;
    case '<': r += "&lt;"; break;
    case '>': r += "&gt;"; break;
    case '"': r += "&quot;"; break;
    case '\'': r += "&#39;"; break;
    default: r += c;
    }
  }
  return r;
}
} // namespace viz

namespace {

namespace fs = std::filesystem;
using viz::fmt;
using viz::xml_escape;
using plan::BufferKind;
using plan::Instr;
using plan::Plan;
using plan::Program;
using plan::RankPlan;

// ---------------------------------------------------------------------------------------------
// Small helpers.


std::string dot_escape(const std::string &s) {
  std::string r;
  for (char c : s) {
    if (c == '"' || c == '\\') r += '\\';
    if (c == '\n') { r += "\\n"; continue; }
    r += c;
  }
  return r;
}


std::string shape_str(const std::vector<int64_t> &shape) {
  if (shape.empty()) return "scalar";
  std::string s;
  for (int64_t d : shape) s += (s.empty() ? "" : "x") + std::to_string(d);
  return s;
}

std::string human_bytes(double b) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::fabs(b) >= 1024.0 && u < 4) { b /= 1024.0; ++u; }
  return u == 0 ? fmt("%.0f", b) + " B" : fmt("%.2f", b) + " " + units[u];
}

std::string mib(int64_t bytes) { return fmt("%.2f", double(bytes) / (1024.0 * 1024.0)); }

bool is_collective(const std::string &op) { return op == "all_reduce" || op == "send" || op == "recv"; }
bool is_backward_op(const std::string &op) {
  return op.find("_bwd") != std::string::npos || op == "accumulate";
}

std::string attr_str(const plan::AttrValue &v) {
  if (auto *i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (auto *d = std::get_if<double>(&v)) return fmt("%g", *d);
  if (auto *s = std::get_if<std::string>(&v)) return *s;
  const auto &vec = std::get<std::vector<int64_t>>(v);
  std::string r = "[";
  for (size_t i = 0; i < vec.size(); ++i) r += (i ? "," : "") + std::to_string(vec[i]);
  return r + "]";
}

const Program *find_program(const RankPlan &r, const std::string &name) {
  for (const Program &p : r.programs)
    if (p.name == name) return &p;
  return nullptr;
}

// Kinds of instruction nodes, and their colours.
enum class Kind { Forward, Backward, Optimizer, Collective };

struct KindStyle {
  const char *fill, *font, *border;
};
KindStyle style_of(Kind k) {
  switch (k) {
  case Kind::Forward: return {"#dce9fa", "#10243e", "#5b86c5"};
  case Kind::Backward: return {"#fde3cb", "#3e2410", "#d08a4b"};
  case Kind::Optimizer: return {"#d7f2d7", "#123812", "#4f9f4f"};
  case Kind::Collective: return {"#d7263d", "#ffffff", "#7a0010"};
  }
  return {"#ffffff", "#000000", "#000000"};
}

// Per-phase costs of one micro-batch on a rank: the compiler's estimates when present, else the
// instruction FLOPs of its programs, else 1 : 2 (known = false).
struct Cost {
  double f = 1.0, b = 2.0;
  bool known = false;
};
Cost fwd_bwd_cost(const RankPlan &r) {
  double f = r.forward_flops, b = r.backward_flops;
  if (f <= 0 && b <= 0) {
    f = b = 0;
    if (const Program *p = find_program(r, "forward"))
      for (const Instr &in : p->instrs) f += in.flops;
    if (const Program *p = find_program(r, "backward"))
      for (const Instr &in : p->instrs) b += in.flops;
    if (const Program *p = find_program(r, "micro_step")) {
      bool bwd = false;
      for (const Instr &in : p->instrs) {
        bwd = bwd || is_backward_op(in.op);
        (bwd ? b : f) += in.flops;
      }
    }
  }
  if (f <= 0 && b <= 0) return Cost{};
  return Cost{std::max(f, 0.0), std::max(b, 0.0), true};
}

std::string schedule_or_default(const Plan &plan) {
  return rt::check_schedule_name(plan.pipeline_schedule).is_ok() ? plan.pipeline_schedule : std::string("gpipe");
}

// The pipeline of a pp > 1 plan, simulated from the first rank of each stage.
// Costs per task kind (forward, backward or its B part, W) from each stage's programs.
rt::Timeline simulate_plan_pipeline(const Plan &plan, bool *from_flops) {
  const int v = std::max(1, plan.virtual_stages);
  return rt::simulate_pipeline(schedule_or_default(plan), static_cast<int>(std::max<int64_t>(1, plan.micro_batches)),
                               rt::plan_pipeline_costs(plan, v, from_flops), v);
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Rank dataflow graph.

namespace viz {

std::string find_dot() {
  const char *path = std::getenv("PATH");
  if (!path) return "";
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (dir.empty()) continue;
    std::string cand = dir + "/dot";
    std::error_code ec;
    if (fs::is_regular_file(cand, ec) && ::access(cand.c_str(), X_OK) == 0) return cand;
  }
  return "";
}

std::string rank_dot(const Plan &plan, const RankPlan &rank) {
  std::ostringstream os;
  auto buf = [&](int32_t id) -> const plan::Buffer * {
    return id >= 0 && id < static_cast<int32_t>(rank.buffers.size()) ? &rank.buffers[id] : nullptr;
  };
  os << "digraph rank" << rank.rank << " {\n"
     << "  graph [rankdir=TB, fontname=\"Helvetica\", fontsize=14, labelloc=t, nodesep=0.25, ranksep=0.35, label=\""
     << dot_escape("rank " + std::to_string(rank.rank) + "  (dp " + std::to_string(rank.dp_rank) + ", tp " +
                   std::to_string(rank.tp_rank) + ", pp " + std::to_string(rank.pp_stage) + ")  -  " +
                   plan.strategy + " plan")
     << "\"];\n"
     << "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10, penwidth=1.2];\n"
     << "  edge [fontname=\"Helvetica\", fontsize=8, color=\"#777777\", arrowsize=0.6];\n";

  std::map<int32_t, std::string> writer;   // buffer -> node that last wrote it
  // Activation bytes [offset, offset + nbytes) -> node that last wrote them: a reshape is no
  // instruction, its result is a view of its input's bytes, found here.
  std::map<std::pair<int64_t, int64_t>, std::string> arena_writer;
  std::set<int32_t> input_nodes;           // Input buffers drawn as sources
  std::set<std::pair<std::string, std::string>> seen_edges;
  std::ostringstream edges;

  int pi = 0;
  for (const Program &prog : rank.programs) {
    if (prog.name == "eval_step") continue;
    const std::string cl = "p" + std::to_string(pi++);
    double gflop = 0;
    for (const Instr &in : prog.instrs) gflop += in.flops / 1e9;
    std::string title = prog.name;
    if (prog.name == "micro_step" || prog.name == "forward" || prog.name == "backward")
      title += "  (x" + std::to_string(plan.micro_batches) + " per step)";
    title += "\n" + std::to_string(prog.instrs.size()) + " instrs, " + fmt("%.3g", gflop) + " GFLOP";
    const char *cl_color = prog.name == "optimizer_step" ? "#4f9f4f"
                           : prog.name == "backward"     ? "#d08a4b"
                                                         : "#5b86c5";
    os << "  subgraph cluster_" << cl << " {\n    label=\"" << dot_escape(title)
       << "\"; style=\"rounded,dashed\"; color=\"" << cl_color << "\"; fontsize=12;\n";

    bool in_bwd = prog.name == "backward";
    bool sub_open = false;
    std::pair<int32_t, bool> sub_key{-1, false};
    int sub_n = 0;
    for (size_t ii = 0; ii < prog.instrs.size(); ++ii) {
      const Instr &in = prog.instrs[ii];
      const std::string id = cl + "_" + std::to_string(ii);
      Kind kind;
      if (is_collective(in.op)) kind = Kind::Collective;
      else if (prog.name == "optimizer_step" || in.op == "adamw_step") kind = Kind::Optimizer;
      else {
        in_bwd = in_bwd || is_backward_op(in.op);
        kind = in_bwd ? Kind::Backward : Kind::Forward;
      }
      // Contiguous runs of one decoder layer (and phase) share a sub-cluster.
      std::pair<int32_t, bool> key{in.layer, in_bwd};
      if (!sub_open || key != sub_key) {
        if (sub_open) os << "    }\n";
        sub_open = in.layer >= 0 && prog.name != "optimizer_step";
        sub_key = key;
        if (sub_open)
          os << "    subgraph cluster_" << cl << "_l" << sub_n++ << " {\n      label=\"layer " << in.layer
             << (in_bwd ? " backward" : " forward") << "\"; style=\"rounded\"; color=\"#bbbbbb\"; fontsize=10;\n";
      }

      std::string label = in.op;
      if (!in.loc.empty()) label += "\n" + in.loc;
      if (kind == Kind::Collective) {
        for (const char *a : {"group", "peer", "tag"}) {
          auto it = in.attrs.find(a);
          if (it != in.attrs.end()) label += std::string("\n") + a + "=" + attr_str(it->second);
        }
        int64_t bytes = 0;
        for (int32_t b : in.op == "recv" ? in.outputs : in.inputs)
          if (auto *bp = buf(b)) bytes += bp->nbytes();
        label += "\n" + human_bytes(double(bytes));
      } else if (in.op == "adamw_step") {
        auto it = in.attrs.find("n");
        if (it != in.attrs.end()) label += "\nn=" + attr_str(it->second) + " tensors";
      }
      KindStyle st = style_of(kind);
      os << (sub_open ? "      " : "    ") << id << " [label=\"" << dot_escape(label) << "\", fillcolor=\"" << st.fill
         << "\", fontcolor=\"" << st.font << "\", color=\"" << st.border << "\"";
      if (kind == Kind::Collective) os << ", shape=box, style=\"filled,bold\", penwidth=2.5";
      os << "];\n";

      // Edges from the producers of this instruction's inputs.
      for (int32_t b : in.inputs) {
        const plan::Buffer *bp = buf(b);
        if (!bp) continue;
        std::string src;
        bool view = false;
        auto w = writer.find(b);
        auto aw = bp->kind == BufferKind::Activation && bp->offset >= 0
                      ? arena_writer.find({bp->offset, bp->nbytes()})
                      : arena_writer.end();
        if (w != writer.end()) {
          src = w->second;
        } else if (aw != arena_writer.end()) {
          src = aw->second;
          view = true;
        } else if (bp->kind == BufferKind::Input) {
          src = "in_" + std::to_string(b);
          input_nodes.insert(b);
        } else {
          continue;  // parameters, optimizer state: no producer in this step
        }
        if (!seen_edges.insert({src, id}).second) continue;
        edges << "  " << src << " -> " << id;
        if (bp->kind == BufferKind::Activation || bp->kind == BufferKind::Input || bp->kind == BufferKind::Output)
          edges << " [label=\"" << shape_str(bp->shape) << (view ? " (view)" : "") << "\"]";
        else
          edges << " [style=dashed, color=\"#9aa89a\"]";
        edges << ";\n";
      }
      for (int32_t b : in.outputs)
        if (const plan::Buffer *bp = buf(b)) {
          writer[b] = id;
          if (bp->kind == BufferKind::Activation && bp->offset >= 0) arena_writer[{bp->offset, bp->nbytes()}] = id;
        }
    }
    if (sub_open) os << "    }\n";
    os << "  }\n";
  }
  for (int32_t b : input_nodes) {
    const plan::Buffer &bp = rank.buffers[b];
    os << "  in_" << b << " [label=\"" << dot_escape(bp.name + "\n" + shape_str(bp.shape))
       << "\", shape=oval, fillcolor=\"#ffffff\", color=\"#555555\"];\n";
  }
  for (const plan::Buffer &bp : rank.buffers) {
    if (bp.kind != BufferKind::Output) continue;
    auto w = writer.find(static_cast<int32_t>(&bp - rank.buffers.data()));
    if (w == writer.end()) continue;
    os << "  out_" << bp.id << " [label=\"" << dot_escape(bp.name) << "\", shape=oval, fillcolor=\"#ffffff\", color=\"#555555\"];\n";
    edges << "  " << w->second << " -> out_" << bp.id << ";\n";
  }
  os << edges.str();
  // Legend.
  os << "  subgraph cluster_legend {\n    label=\"legend\"; style=\"rounded\"; color=\"#cccccc\"; fontsize=10;\n";
  const std::pair<const char *, Kind> legend[] = {{"forward", Kind::Forward},
                                                  {"backward", Kind::Backward},
                                                  {"optimizer", Kind::Optimizer},
                                                  {"collective", Kind::Collective}};
  for (const auto &[name, k] : legend) {
    KindStyle st = style_of(k);
    os << "    legend_" << name << " [label=\"" << name << "\", fillcolor=\"" << st.fill << "\", fontcolor=\""
       << st.font << "\", color=\"" << st.border << "\"];\n";
  }
  os << "    { rank=same; legend_forward; legend_backward; legend_optimizer; legend_collective; }\n  }\n";
  os << "}\n";
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// Timeline.

std::string timeline_svg(const Plan &plan) {
  struct Row {
    std::string label, sublabel;
  };
  std::vector<Row> rows;
  rt::Timeline tl;
  const int M = static_cast<int>(std::max<int64_t>(1, plan.micro_batches));
  std::string title;
  const bool pipelined = plan.mesh.pp > 1;
  bool from_flops = true;

  if (pipelined) {
    const int S = plan.mesh.pp;
    for (int s = 0; s < S; ++s) {
      std::vector<int32_t> members;
      for (const RankPlan &r : plan.ranks)
        if (r.pp_stage == s) members.push_back(r.rank);
      std::string sub = members.size() == 1 ? "rank " : "ranks ";
      if (members.size() <= 6) {
        for (size_t i = 0; i < members.size(); ++i) sub += (i ? "," : "") + std::to_string(members[i]);
      } else {
        sub += std::to_string(members.front()) + ".." + std::to_string(members.back()) + " (" +
               std::to_string(members.size()) + ")";
      }
      rows.push_back({"stage " + std::to_string(s), sub});
    }
    const std::string sched = schedule_or_default(plan);
    tl = simulate_plan_pipeline(plan, &from_flops);
    title = "Pipeline schedule " + sched + ": " + std::to_string(S) + " stages x " + std::to_string(M) +
            " micro-batches" + (plan.virtual_stages > 1 ? " x " + std::to_string(plan.virtual_stages) + " chunks" : "") +
            "  -  bubble " + fmt("%.1f", 100.0 * tl.bubble_fraction) + "%";
  } else {
    // No pipeline: every rank runs forward + backward of each micro-batch back to back.
    const int R = std::max<int>(1, static_cast<int>(plan.ranks.size()));
    tl.busy.assign(R, 0.0);
    tl.bubble.assign(R, 0.0);
    for (int r = 0; r < R; ++r) {
      double f = 1.0, b = 2.0;
      if (r < static_cast<int>(plan.ranks.size())) {
        const RankPlan &rp = plan.ranks[r];
        const Cost c = fwd_bwd_cost(rp);
        f = c.f;
        b = c.b;
        from_flops = from_flops && c.known;
        rows.push_back({"rank " + std::to_string(r), "dp " + std::to_string(rp.dp_rank) + ", tp " + std::to_string(rp.tp_rank)});
      } else {
        rows.push_back({"rank " + std::to_string(r), ""});
      }
      double t = 0;
      for (int mb = 0; mb < M; ++mb) {
        tl.entries.push_back({r, rt::Phase::Forward, mb, t, t + f});
        t += f;
        tl.entries.push_back({r, rt::Phase::Backward, mb, t, t + b});
        t += b;
      }
      tl.busy[r] = t;
      tl.makespan = std::max(tl.makespan, t);
    }
    // Ranks with less work wait for the slowest at the optimizer step (gradient all-reduce).
    double mean = 0;
    for (int r = 0; r < R; ++r) {
      tl.bubble[r] = tl.makespan > 0 ? 1.0 - tl.busy[r] / tl.makespan : 0.0;
      mean += tl.bubble[r];
    }
    tl.bubble_fraction = mean / R;
    title = "No pipeline (pp = 1): " + std::to_string(M) + " micro-batches per rank  -  bubble " +
            fmt("%.1f", 100.0 * tl.bubble_fraction) + "%";
  }

  // Layout.
  const double left = 150, plot_w = 900, right = 90, row_h = 34, row_gap = 10, top = 78;
  const int n_rows = static_cast<int>(rows.size());
  const double plot_h = n_rows * (row_h + row_gap) - row_gap;
  const double width = left + plot_w + right, height = top + plot_h + 56;
  const double span = tl.makespan > 0 ? tl.makespan : 1.0;
  auto X = [&](double t) { return left + plot_w * t / span; };
  auto Y = [&](int row) { return top + row * (row_h + row_gap); };
  const char *kFwd = "#4e79a7", *kBwd = "#e8853a", *kWgt = "#59a14f";
  const bool has_weight = std::any_of(tl.entries.begin(), tl.entries.end(),
                                      [](const rt::TimelineEntry &e) { return e.phase == rt::Phase::Weight; });

  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" width=\"" << width << "\" height=\"" << height
     << "\" viewBox=\"0 0 " << width << " " << height << "\" font-family=\"Helvetica, Arial, sans-serif\">\n"
     << "<defs><pattern id=\"idle-hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
        "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#f3f3f3\"/>"
        "<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#d0d0d0\" stroke-width=\"2\"/></pattern></defs>\n"
     << "<rect x=\"0\" y=\"0\" width=\"" << width << "\" height=\"" << height << "\" fill=\"#ffffff\"/>\n"
     << "<text x=\"" << left << "\" y=\"26\" font-size=\"16\" font-weight=\"bold\">" << xml_escape(title) << "</text>\n";
  // Legend.
  double lx = left;
  std::vector<std::pair<const char *, const char *>> legend = {
      {kFwd, "forward (micro-batch #)"},
      {kBwd, has_weight ? "backward B: input gradient" : "backward (micro-batch #)"},
      {"url(#idle-hatch)", "idle (bubble)"}};
  if (has_weight) legend.insert(legend.begin() + 2, {kWgt, "W: adapter gradient"});
  for (const auto &[fill, text] : legend) {
    os << "<rect x=\"" << lx << "\" y=\"40\" width=\"18\" height=\"14\" fill=\"" << fill
       << "\" stroke=\"#888888\" stroke-width=\"0.5\"/><text x=\"" << lx + 24 << "\" y=\"52\" font-size=\"12\">" << text
       << "</text>\n";
    lx += 60 + 7.0 * std::string(text).size();
  }
  // Rows: idle background, then the task boxes.
  for (int r = 0; r < n_rows; ++r) {
    os << "<text x=\"" << left - 10 << "\" y=\"" << Y(r) + row_h / 2 - 1 << "\" font-size=\"13\" text-anchor=\"end\">"
       << xml_escape(rows[r].label) << "</text>\n";
    if (!rows[r].sublabel.empty())
      os << "<text x=\"" << left - 10 << "\" y=\"" << Y(r) + row_h / 2 + 12 << "\" font-size=\"10\" fill=\"#666666\" "
            "text-anchor=\"end\">" << xml_escape(rows[r].sublabel) << "</text>\n";
    os << "<rect class=\"idle\" x=\"" << left << "\" y=\"" << Y(r) << "\" width=\"" << plot_w << "\" height=\"" << row_h
       << "\" fill=\"url(#idle-hatch)\"/>\n";
    if (r < static_cast<int>(tl.bubble.size()))
      os << "<text x=\"" << left + plot_w + 8 << "\" y=\"" << Y(r) + row_h / 2 + 4 << "\" font-size=\"11\" fill=\"#555555\">idle "
         << fmt("%.1f", 100.0 * tl.bubble[r]) << "%</text>\n";
  }
  for (const rt::TimelineEntry &e : tl.entries) {
    if (e.stage < 0 || e.stage >= n_rows) continue;
    const bool fwd = e.phase == rt::Phase::Forward, wgt = e.phase == rt::Phase::Weight;
    const double x = X(e.start), w = std::max(0.5, X(e.end) - X(e.start)), y = Y(e.stage);
    os << "<g><rect class=\"task " << (fwd ? "fwd" : wgt ? "wgt" : "bwd") << "\" data-row=\"" << e.stage << "\" data-mb=\""
       << e.micro_batch << "\" x=\"" << fmt("%.2f", x) << "\" y=\"" << y << "\" width=\"" << fmt("%.2f", w)
       << "\" height=\"" << row_h << "\" fill=\"" << (fwd ? kFwd : wgt ? kWgt : kBwd)
       << "\" stroke=\"#ffffff\" stroke-width=\"1\"" << (e.chunk % 2 ? " fill-opacity=\"0.6\"" : "") << "><title>"
       << (fwd ? "forward" : wgt ? "weight gradient (W)" : has_weight ? "input gradient (B)" : "backward")
       << (plan.virtual_stages > 1 ? " of chunk " + std::to_string(e.chunk) : std::string()) << " micro-batch "
       << e.micro_batch << ": " << fmt("%.4g", e.start) << " .. " << fmt("%.4g", e.end) << "</title></rect>";
    // Interleaved: "3.1" is micro-batch 3 on the rank's chunk 1 (odd chunks drawn lighter).
    const std::string label = std::to_string(e.micro_batch) + (e.chunk ? "." + std::to_string(e.chunk) : "");
    if (w >= 6.5 * label.size() + 4)
      os << "<text x=\"" << fmt("%.2f", x + w / 2) << "\" y=\"" << y + row_h / 2 + 4
         << "\" font-size=\"11\" fill=\"#ffffff\" text-anchor=\"middle\" pointer-events=\"none\">" << label << "</text>";
    os << "</g>\n";
  }
  // Time axis.
  const double ay = top + plot_h + 8;
  os << "<line x1=\"" << left << "\" y1=\"" << ay << "\" x2=\"" << left + plot_w << "\" y2=\"" << ay
     << "\" stroke=\"#444444\"/>\n";
  const double scale = from_flops ? 1e9 : 1.0;
  for (int i = 0; i <= 4; ++i) {
    const double t = span * i / 4;
    os << "<line x1=\"" << X(t) << "\" y1=\"" << ay << "\" x2=\"" << X(t) << "\" y2=\"" << ay + 5
       << "\" stroke=\"#444444\"/><text x=\"" << X(t) << "\" y=\"" << ay + 18
       << "\" font-size=\"10\" text-anchor=\"middle\">" << fmt("%.3g", t / scale) << "</text>\n";
  }
  os << "<text x=\"" << left + plot_w / 2 << "\" y=\"" << ay + 36 << "\" font-size=\"11\" text-anchor=\"middle\" fill=\"#444444\">"
     << (from_flops ? "time (GFLOP of per-stage work at equal device throughput)" : "time (relative units: forward 1, backward 2)")
     << "</text>\n";
  os << "</svg>\n";
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// Mesh.

std::string mesh_svg(const Plan &plan) {
  const plan::Mesh m = plan.mesh;
  const int dp = std::max(1, m.dp), tp = std::max(1, m.tp), pp = std::max(1, m.pp);
  const double bw = 74, bh = 46, gap = 8, pad = 16, head = 54, left = 40;
  const double panel_w = tp * (bw + gap) - gap + 2 * pad, panel_h = dp * (bh + gap) - gap + 2 * pad + 20;
  const double width = std::max(left + pp * (panel_w + 20), 600.0), height = head + panel_h + 16;
  const char *palette[] = {"#dce9fa", "#fde3cb", "#d7f2d7", "#efd9f5", "#fff1b8", "#d9f2f2", "#f5d9d9", "#e6e6e6"};
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"mesh\" width=\"" << width << "\" height=\"" << height
     << "\" viewBox=\"0 0 " << width << " " << height << "\" font-family=\"Helvetica, Arial, sans-serif\">\n"
     << "<text x=\"" << left << "\" y=\"22\" font-size=\"15\" font-weight=\"bold\">device mesh dp=" << m.dp << " x tp=" << m.tp
     << " x pp=" << m.pp << " (" << m.size() << " ranks)</text>\n"
     << "<text x=\"" << left << "\" y=\"40\" font-size=\"11\" fill=\"#555555\">rows: dp index, columns: tp index, "
        "panels: pipeline stage; rank = (pp*dp + dp_i)*tp + tp_i</text>\n";
  for (int p = 0; p < pp; ++p) {
    const double px = left + p * (panel_w + 20), py = head;
    os << "<rect x=\"" << px << "\" y=\"" << py << "\" width=\"" << panel_w << "\" height=\"" << panel_h
       << "\" rx=\"8\" fill=\"none\" stroke=\"#999999\" stroke-dasharray=\"4 3\"/>\n"
       << "<text x=\"" << px + pad << "\" y=\"" << py + 16 << "\" font-size=\"12\" font-weight=\"bold\">stage " << p
       << "</text>\n";
    if (p + 1 < pp)
      os << "<text x=\"" << px + panel_w + 4 << "\" y=\"" << py + panel_h / 2 + 5 << "\" font-size=\"14\" fill=\"#777777\">&#8594;</text>\n";
    for (int d = 0; d < dp; ++d)
      for (int t = 0; t < tp; ++t) {
        const int32_t r = plan::rank_of(m, d, t, p);
        const double x = px + pad + t * (bw + gap), y = py + 20 + pad + d * (bh + gap);
        os << "<g class=\"mesh-rank\" data-rank=\"" << r << "\"><rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << bw
           << "\" height=\"" << bh << "\" rx=\"5\" fill=\"" << palette[p % 8] << "\" stroke=\"#555555\"/>"
           << "<text x=\"" << x + bw / 2 << "\" y=\"" << y + 20 << "\" font-size=\"14\" font-weight=\"bold\" text-anchor=\"middle\">r"
           << r << "</text><text x=\"" << x + bw / 2 << "\" y=\"" << y + 36
           << "\" font-size=\"10\" fill=\"#444444\" text-anchor=\"middle\">dp " << d << " &#183; tp " << t << "</text></g>\n";
      }
  }
  os << "</svg>\n";
  return os.str();
}

} // namespace viz

// ---------------------------------------------------------------------------------------------
// The directory.

namespace {

Status write_text(const std::string &path, const std::string &text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return Status::error("cannot write " + path);
  f << text;
  f.close();
  if (!f) return Status::error("error writing " + path);
  return Status::ok();
}

std::string shell_quote(const std::string &s) {
  std::string r = "'";
  for (char c : s) {
    if (c == '\'') r += "'\\''";
    else r += c;
  }
  return r + "'";
}

std::string index_html(const Plan &plan, const std::vector<bool> &have_svg, const std::string &mesh,
                       const std::string &timeline, const rt::Timeline *pipe, const std::string &measured) {
  std::ostringstream h;
  const std::string mesh_str = "dp=" + std::to_string(plan.mesh.dp) + " x tp=" + std::to_string(plan.mesh.tp) +
                               " x pp=" + std::to_string(plan.mesh.pp);
  h << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Parallora plan: "
    << xml_escape(plan.strategy) << ", " << mesh_str << "</title>\n<style>\n"
    << "body{font-family:Helvetica,Arial,sans-serif;margin:24px 32px;color:#1b1b1b;max-width:1400px}\n"
    << "h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}\n"
    << ".meta{color:#555;font-size:13px;line-height:1.6}\n"
    << "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #d4d4d4;padding:4px 8px;text-align:right}\n"
    << "th{background:#f0f3f8}td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fafafa}\n"
    << ".fig{overflow-x:auto;border:1px solid #e4e4e4;border-radius:6px;padding:8px;background:#fff}\n"
    << "details{margin:6px 0}summary{cursor:pointer;font-size:14px}img.graph{max-width:100%;border:1px solid #eee}\n"
    << "</style>\n</head>\n<body>\n";
  h << "<h1>Plan: " << xml_escape(plan.strategy) << " &mdash; mesh " << mesh_str << " (" << plan.world_size
    << (plan.world_size == 1 ? " rank" : " ranks") << ")</h1>\n";
  h << "<div class=\"meta\">";
  if (!plan.producer.empty()) h << "producer " << xml_escape(plan.producer) << " &middot; ";
  h << "global batch " << plan.global_batch << " &middot; seq_len " << plan.seq_len << " &middot; micro-batches "
    << plan.micro_batches << " &middot; vocab " << plan.vocab_size;
  if (plan.mesh.pp > 1) {
    h << " &middot; pipeline schedule " << xml_escape(plan.pipeline_schedule);
    if (pipe) h << " (predicted bubble " << fmt("%.1f", 100.0 * pipe->bubble_fraction) << "%)";
  }
  h << "<br>LoRA r=" << plan.lora.rank << " alpha=" << fmt("%g", plan.lora.alpha);
  if (!plan.lora.target_modules.empty()) {
    h << " targets ";
    for (size_t i = 0; i < plan.lora.target_modules.size(); ++i)
      h << (i ? "," : "") << xml_escape(plan.lora.target_modules[i]);
  }
  h << " &middot; lr " << fmt("%g", plan.hparams.lr) << " (" << xml_escape(plan.hparams.schedule) << ")</div>\n";

  h << "<h2>Device mesh</h2>\n<div class=\"fig\">\n" << mesh << "</div>\n";

  h << "<h2>Ranks</h2>\n<table>\n<tr><th>rank</th><th>dp</th><th>tp</th><th>pp</th><th>slots</th>"
    << "<th>peak MiB</th><th>params MiB</th><th>grads MiB</th><th>optimizer MiB</th><th>arena MiB</th>"
    << "<th>GFLOP / step</th><th class=\"l\">sent / step</th><th>bubble</th><th class=\"l\">graph</th></tr>\n";
  for (const RankPlan &r : plan.ranks) {
    h << "<tr id=\"rank-" << r.rank << "\"><td>" << r.rank << "</td><td>" << r.dp_rank << "</td><td>" << r.tp_rank
      << "</td><td>" << r.pp_stage << "</td><td>" << r.slots << "</td><td>" << mib(r.peak_bytes) << "</td><td>"
      << mib(r.param_bytes) << "</td><td>" << mib(r.grad_bytes) << "</td><td>" << mib(r.optimizer_bytes)
      << "</td><td>" << mib(r.arena_bytes) << "</td><td>" << fmt("%.3f", r.flops_per_step / 1e9)
      << "</td><td class=\"l\">";
    if (r.bytes_sent.empty()) h << "&mdash;";
    bool first = true;
    for (const auto &[k, v] : r.bytes_sent) {
      h << (first ? "" : "<br>") << xml_escape(k) << " " << human_bytes(double(v));
      first = false;
    }
    double bubble = r.bubble_fraction;
    std::string mark;
    if (bubble <= 0 && pipe && r.pp_stage >= 0 && r.pp_stage < static_cast<int>(pipe->bubble.size())) {
      bubble = pipe->bubble[r.pp_stage];
      mark = "&asymp;";  // simulated here, not in the plan
    }
    const std::string base = "rank" + std::to_string(r.rank);
    const size_t idx = static_cast<size_t>(&r - plan.ranks.data());
    h << "</td><td>" << mark << fmt("%.1f", 100.0 * bubble) << "%</td><td class=\"l\">";
    if (idx < have_svg.size() && have_svg[idx]) h << "<a href=\"" << base << ".svg\">svg</a> &middot; ";
    h << "<a href=\"" << base << ".dot\">dot</a></td></tr>\n";
  }
  h << "</table>\n";

  h << "<h2>Pipeline timeline</h2>\n<div class=\"fig\">\n" << timeline << "</div>\n";
  h << measured;  // the measured step (viz_trace.h), when a trace was given

  h << "<h2>Rank programs</h2>\n<p class=\"meta\">One node per instruction: <span style=\"background:#dce9fa\">forward</span>, "
       "<span style=\"background:#fde3cb\">backward</span>, <span style=\"background:#d7f2d7\">optimizer</span>, "
       "<span style=\"background:#d7263d;color:#fff\">collective</span>; edges are buffers (activation shapes "
       "labelled, gradients dashed). eval_step is not drawn.</p>\n";
  for (size_t i = 0; i < plan.ranks.size(); ++i) {
    const RankPlan &r = plan.ranks[i];
    const std::string base = "rank" + std::to_string(r.rank);
    size_t n = 0, coll = 0;
    for (const Program &p : r.programs) {
      if (p.name == "eval_step") continue;
      n += p.instrs.size();
      for (const Instr &in : p.instrs) coll += is_collective(in.op);
    }
    h << "<details" << (i == 0 ? " open" : "") << "><summary>rank " << r.rank << " (dp " << r.dp_rank << ", tp "
      << r.tp_rank << ", pp " << r.pp_stage << "): " << n << " instructions, " << coll << " collectives</summary>\n";
    if (i < have_svg.size() && have_svg[i])
      h << "<p><a href=\"" << base << ".svg\">" << base << ".svg</a> &middot; <a href=\"" << base << ".dot\">" << base
        << ".dot</a></p>\n<img class=\"graph\" loading=\"lazy\" src=\"" << base << ".svg\" alt=\"" << base << " dataflow graph\">\n";
    else
      h << "<p><a href=\"" << base << ".dot\">" << base << ".dot</a> (render: <code>dot -Tsvg " << base << ".dot -o "
        << base << ".svg</code>)</p>\n";
    h << "</details>\n";
  }
  h << viz::viewer_script() << "</body>\n</html>\n";
  return h.str();
}

} // namespace

Status write_plan_viz(const plan::Plan &plan, const std::string &dir, std::ostream &log, const VizOptions &opt) {
  std::optional<viz::MeasuredStep> measured;
  if (!opt.trace.empty())
    if (Status st = viz::load_measured_step(opt.trace, opt.trace_step, plan, &measured.emplace()); !st) return st;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) return Status::error("cannot create directory " + dir + (ec ? ": " + ec.message() : ""));
  const fs::path d(dir);

  const std::string dot = viz::find_dot();
  // Graphviz needs minutes on graphs of many thousand nodes; those stay .dot only.
  constexpr size_t kMaxRenderNodes = 4000;
  if (dot.empty())
    log << "viz: note: Graphviz 'dot' not found on PATH; wrote rank*.dot only (render with dot -Tsvg)\n";
  std::vector<bool> have_svg(plan.ranks.size(), false);
  for (size_t i = 0; i < plan.ranks.size(); ++i) {
    const RankPlan &r = plan.ranks[i];
    const std::string base = "rank" + std::to_string(r.rank);
    const std::string dot_path = (d / (base + ".dot")).string(), svg_path = (d / (base + ".svg")).string();
    if (Status st = write_text(dot_path, viz::rank_dot(plan, r)); !st) return st;
    if (dot.empty()) continue;
    size_t nodes = 0;
    for (const Program &p : r.programs)
      if (p.name != "eval_step") nodes += p.instrs.size();
    if (nodes > kMaxRenderNodes) {
      log << "viz: note: " << base << " has " << nodes << " instructions; not rendering (dot -Tsvg " << dot_path << ")\n";
      continue;
    }
    const std::string err_path = (d / (base + ".dot.err")).string();
    const std::string cmd = shell_quote(dot) + " -Tsvg " + shell_quote(dot_path) + " -o " + shell_quote(svg_path) +
                            " 2>" + shell_quote(err_path);
    const int rc = std::system(cmd.c_str());
    std::string err;
    {
      std::ifstream ef(err_path);
      std::stringstream ss;
      ss << ef.rdbuf();
      err = ss.str();
    }
    fs::remove(err_path, ec);
    if (rc != 0) return Status::error("dot -Tsvg " + dot_path + " failed (status " + std::to_string(rc) + "): " + err);
    have_svg[i] = true;
  }

  const std::string mesh = viz::mesh_svg(plan), timeline = viz::timeline_svg(plan);
  if (Status st = write_text((d / "mesh.svg").string(), mesh); !st) return st;
  if (Status st = write_text((d / "timeline.svg").string(), timeline); !st) return st;

  std::optional<rt::Timeline> pipe;
  if (plan.mesh.pp > 1) pipe = simulate_plan_pipeline(plan, nullptr);
  std::string measured_section;
  if (measured) {
    if (Status st = write_text((d / "measured.svg").string(), viz::measured_svg(*measured)); !st) return st;
    measured_section = viz::measured_html(plan, *measured, pipe ? &*pipe : nullptr);
  }
  if (Status st = write_text((d / "index.html").string(),
                             index_html(plan, have_svg, mesh, timeline, pipe ? &*pipe : nullptr, measured_section));
      !st)
    return st;
  log << "viz: wrote " << (d / "index.html").string() << " (" << plan.ranks.size() << " rank graphs"
      << (dot.empty() ? ", .dot only" : "") << ", timeline, mesh"
      << (measured ? ", measured step " + std::to_string(measured->step) + " of " + opt.trace : std::string()) << ")\n";
  return Status::ok();
}

} // namespace parallora
