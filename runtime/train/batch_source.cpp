//===- batch_source.cpp - global batches for a session ---------------------===//
#include "runtime/train/batch_source.h"

#include <sys/stat.h>

#include "runtime/core/executor.h"
#include "runtime/train/run_summary.h"

namespace parallora::rt {

void plan_label_rule(const plan::Plan &plan, int64_t *shift, int64_t *ignore_index) {
  *shift = 1;
  *ignore_index = -100;
  for (const plan::RankPlan &r : plan.ranks)
    for (const plan::Program &p : r.programs)
      for (const plan::Instr &in : p.instrs) {
        if (in.op != "cross_entropy_fwd") continue;
        auto get = [&](const char *k, int64_t *v) {
          auto it = in.attrs.find(k);
          if (it != in.attrs.end() && std::holds_alternative<int64_t>(it->second)) *v = std::get<int64_t>(it->second);
        };
        get("shift", shift);
        get("ignore_index", ignore_index);
        return;
      }
}

bool plan_has_input(const plan::Plan &plan, const std::string &name) {
  for (const plan::RankPlan &r : plan.ranks)
    for (const plan::Buffer &b : r.buffers)
      if (b.kind == plan::BufferKind::Input && b.name == name) return true;
  return false;
}

StatusOr<std::unique_ptr<BatchSource>> BatchSource::open(const BatchSourceOptions &o, const plan::Plan &plan) {
  auto s = open_impl(o, plan);
  if (s) return s;
  const std::string &m = s.message();
  if (m.rfind("--", 0) == 0) return s.status();  // about another flag (--data-layout)
  // "--data PATH: ..." when the message starts with the token file, else "--data: ..." (it names the file).
  return Status::error(o.flag + (m.rfind(o.path + ": ", 0) == 0 ? " " : ": ") + m);
}

StatusOr<std::unique_ptr<BatchSource>> BatchSource::open_impl(const BatchSourceOptions &o, const plan::Plan &plan) {
  std::unique_ptr<BatchSource> s(new BatchSource());
  s->path_ = o.path;
  s->seq_len_ = plan.seq_len;
  plan_label_rule(plan, &s->shift_, &s->ignore_);
  auto tf = TokenFile::open(o.path, o.format);
  if (!tf) return Status::error(o.path + ": " + tf.message());  // "--data PATH: cannot open ..." as before
  s->tokens_ = std::make_unique<TokenFile>(std::move(*tf));
  const std::string mask_path = label_mask_path(o.path);
  struct stat st;
  const bool has_mask = ::stat(mask_path.c_str(), &st) == 0;
  if (o.layout != "auto" && o.layout != "packed" && o.layout != "padded")
    return Status::error("--data-layout " + o.layout + ": expected auto, packed or padded");
  if (!has_mask) {
    // A --packing plan's position_ids / segment_ids: a flat token stream has no examples to
    // derive them from, and zeros would train on wrong positions and masks.
    for (const char *name : {"position_ids", "segment_ids"})
      if (plan_has_input(plan, name))
        return Status::error(o.path + ": the plan takes input '" + name + "' (compiled with lora-compile --packing) but " +
                             o.path + " is a token stream without a label-mask file " + mask_path +
                             " (prepare examples with scripts/prepare_data.py, or compile without --packing)");
    if (o.layout != "auto")
      return Status::error("--data-layout " + o.layout + " needs fine-tuning examples: " + o.path + " has no label-mask file " +
                           mask_path + " (scripts/prepare_data.py writes both)");
    s->stream_ = std::make_unique<SequenceLoader>(s->tokens_.get(), plan.seq_len, o.seed, o.shuffle);
    if (plan.vocab_size > 0)
      if (Status v = s->stream_->check_vocab(plan.vocab_size); !v) return v;
    return s;
  }
  auto mf = LabelMaskFile::open(mask_path, *s->tokens_);
  if (!mf) return mf.status();
  s->mask_ = std::make_unique<LabelMaskFile>(std::move(*mf));
  if (plan.vocab_size > 0 && int64_t(s->mask_->vocab_size) > plan.vocab_size)
    return Status::error(mask_path + ": prepared with a tokenizer of " + std::to_string(s->mask_->vocab_size) +
                         " ids but the plan's model has a vocabulary of " + std::to_string(plan.vocab_size));
  if (plan.vocab_size > 0) {
    SequenceLoader check(s->tokens_.get(), 1, 0, false);
    if (Status v = check.check_vocab(plan.vocab_size); !v) return v;
  }
  if (s->shift_ != 1)
    return Status::error(mask_path + ": label masks need the causal-LM loss (shift 1); the plan's cross-entropy has shift " +
                         std::to_string(s->shift_));
  const bool plan_packs = plan_has_input(plan, "segment_ids");
  if (o.layout == "packed" && !plan_packs)
    return Status::error("--data-layout packed: the plan has no input 'segment_ids' (compile it with lora-compile "
                         "--packing, so attention stays inside each example)");
  s->layout_ = (o.layout == "packed" || (o.layout == "auto" && plan_packs)) ? RowLayout::Packed : RowLayout::Padded;
  auto el = ExampleLoader::create(s->tokens_.get(), s->mask_.get(), plan.seq_len, s->layout_, o.seed, o.shuffle,
                                  int32_t(s->ignore_));
  if (!el) return el.status();
  s->examples_ = std::move(*el);
  return s;
}

int64_t BatchSource::rows() const { return examples_ ? examples_->num_rows() : stream_->num_sequences(); }

Status BatchSource::next(int64_t rows) {
  const int64_t T = seq_len_;
  if (examples_) {
    examples_->next(rows, &batch_);
  } else {
    batch_.input_ids.resize(size_t(rows * T));
    if (Status s = stream_->next(rows, batch_.input_ids.data()); !s) return s;
  }
  // The labels the cross-entropy counts: position t >= shift whose label is not ignore_index.
  const std::vector<int32_t> &lab = examples_ ? batch_.labels : batch_.input_ids;
  int64_t n = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = shift_; t < T; ++t) n += lab[size_t(r * T + t)] != ignore_ ? 1 : 0;
  label_count_ = n;
  if (n == 0)
    return Status::error(path_ + ": a global batch of " + std::to_string(rows) + " rows at data position " +
                         std::to_string(position().index) + " has no trained token: its loss would be 0/0");
  if (n > INT32_MAX)
    return Status::error(path_ + ": " + std::to_string(n) + " trained tokens in one global batch (at most 2^31-1)");
  return Status::ok();
}

Status BatchSource::feed(Executor &ex, int64_t first, int64_t rows, int slot) const {
  const size_t off = size_t(first * seq_len_);
  const int64_t count = rows * seq_len_;
  auto has = [&](const char *name) {
    const BufferTensor *b = ex.find(name, slot);
    return b && b->buffer->kind == plan::BufferKind::Input;
  };
  auto put = [&](const char *name, const std::vector<int32_t> &v) -> Status {
    if (!has(name)) return Status::ok();
    return ex.feed(name, v.data() + off, count, slot);
  };
  if (Status s = put("input_ids", batch_.input_ids); !s) return s;
  if (Status s = put("labels", examples_ ? batch_.labels : batch_.input_ids); !s) return s;
  if (has("position_ids") || has("segment_ids")) {
    if (!examples_)
      return Status::error("the plan takes position_ids / segment_ids (compiled with --packing) but " + path_ +
                           " is a plain token stream without a label-mask file (prepare the data with scripts/prepare_data.py)");
    if (Status s = put("position_ids", batch_.position_ids); !s) return s;
    if (Status s = put("segment_ids", batch_.segment_ids); !s) return s;
  }
  return Status::ok();
}

std::string BatchSource::describe() const {
  if (!examples_)
    return std::to_string(tokens_->num_tokens()) + " tokens, " + std::to_string(stream_->num_sequences()) + " sequences";
  const double masked = 100.0 * (1.0 - double(mask_->num_trained) / double(std::max<int64_t>(1, tokens_->num_tokens())));
  const double fill = 100.0 * double(examples_->real_tokens()) / double(std::max<int64_t>(1, rows() * seq_len_));
  return std::to_string(tokens_->num_tokens()) + " tokens, " + std::to_string(mask_->num_examples()) + " examples (" +
         fmt("%.1f", masked) + "% masked, labels from " + mask_->path + ") in " + std::to_string(rows()) + " " +
         (packed() ? "packed" : "padded") + " rows, " + fmt("%.1f", fill) + "% of row tokens real";
}

DataPosition BatchSource::position() const { return examples_ ? examples_->position() : stream_->position(); }

void BatchSource::restore(DataPosition pos) {
  if (examples_) examples_->restore(pos);
  else stream_->restore(pos);
}

} // namespace parallora::rt
