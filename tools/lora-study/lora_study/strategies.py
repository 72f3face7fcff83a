"""Strategy names -> lora-compile flags (stdlib only: scripts/compare_strategies.py imports it too).

A name is a mesh and options joined by '-':
    single | dp2 | tp4 | pp2-1f1b | pp4-gpipe-m8 | dp2xtp2xpp2-zero1 | dp4-zero1
  mesh     degrees joined by 'x' (dpN, tpN, ppN; each at most once), or 'single'
  gpipe|1f1b|zbh1   pipeline schedule (default 1f1b; only with pp > 1; zbh1 = lora-compile's zb-h1)
  vV       interleaved 1F1B with V model chunks per rank (--pipeline-schedule interleaved --virtual-stages V)
  mM       micro-batches per optimizer step (default: --micro-batches, else 2, or 2 x pp with pp > 1)
  zero1    shard the AdamW moments over the data-parallel ranks
The seed's spellings are aliases resolved with the study's options (resolve_alias):
  data_parallel (dp over --gpus), model_parallel / tensor_parallel (tp over --gpus),
  pipeline_parallel (--stages), hybrid_parallel (--nodes x --gpus-per-node: tensor parallel inside
  a node, pipeline stages across nodes, Megatron's placement by bandwidth, as lora-compile does).
"""
import re
from dataclasses import dataclass, field

# compare_strategies.py's 15 strategies (the default study) and how many micro-batches each runs.
DEFAULT_STRATEGIES = [
    "single", "dp2", "dp4", "tp2", "tp4", "pp2-gpipe-m2", "pp2-1f1b-m4", "pp4-gpipe-m4", "pp4-1f1b-m8",
    "dp2xpp2", "dp2xtp2", "tp2xpp2", "dp2xtp2xpp2", "dp4-zero1", "dp2xtp2xpp2-zero1",
]
# Opt-in: pipelines with a stage that holds no adapter when the model has few layers (on the
# 2-layer tiny LLaMA: pp 4 = embedding | layer 0 | layer 1 | head, pp 3 puts the head alone);
# tests/tools/pipeline_stage_without_adapter.test.
EXTRA_STRATEGIES = ["pp3-1f1b-m4", "tp2xpp3-gpipe-m2", "dp2xpp4-1f1b-zero1"]
# Opt-in: the newer pipeline schedules (tests/tools/pipeline_schedules.test): zero-bubble ZB-H1.
# and interleaved 1F1B (pp 4 x 2 chunks needs 8 units: models/configs/tiny-llama-6l.json).
SCHEDULE_STRATEGIES = ["pp2-zbh1-m4", "pp4-zbh1-m8", "dp2xpp2-zbh1-m2", "tp2xpp2-zbh1-m4",
                       "pp2-v2-m4", "pp4-v2-m8", "dp2xpp2-v2-m2", "tp2xpp2-v3-m4"]
# compare_strategies.py's names whose micro-batch count or schedule differs from the general rule
# (the name is kept in tables; this says what it means).
LEGACY_NAMES = {"dp2xpp2": "dp2xpp2-m2", "tp2xpp2": "tp2xpp2-gpipe-m4", "dp2xtp2xpp2": "dp2xtp2xpp2-m2",
                "dp2xtp2xpp2-zero1": "dp2xtp2xpp2-m2-zero1", "dp2xpp4-1f1b-zero1": "dp2xpp4-1f1b-m2-zero1"}

SEED_ALIASES = ("data_parallel", "model_parallel", "tensor_parallel", "pipeline_parallel", "hybrid_parallel")


class StrategyError(ValueError):
    pass


@dataclass
class Strategy:
    name: str          # the canonical spelling, e.g. dp2xtp2xpp2-m2-zero1
    dp: int = 1
    tp: int = 1
    pp: int = 1
    schedule: str = ""  # gpipe | 1f1b | zb-h1 | interleaved with pp > 1
    virtual: int = 0    # interleaved: model chunks per rank
    micro: int = 0      # 0: the default for this mesh (filled by with_defaults)
    zero1: bool = False
    alias: str = ""     # the spelling the user gave, when it was an alias
    extra_flags: list = field(default_factory=list)

    @property
    def ranks(self):
        return self.dp * self.tp * self.pp

    def kind(self):
        """lora-compile's --strategy for this mesh."""
        used = [k for k, v in (("data", self.dp), ("tensor", self.tp), ("pipeline", self.pp)) if v > 1]
        return "single" if not used else used[0] if len(used) == 1 else "hybrid"

    def compile_flags(self):
        f = []
        if self.kind() != "single":
            f += ["--strategy", self.kind()]
        for k, v in (("--dp", self.dp), ("--tp", self.tp), ("--pp", self.pp)):
            if v > 1:
                f += [k, str(v)]
        if self.pp > 1:
            f += ["--schedule", self.schedule or "1f1b"]
        if self.virtual:
            f += ["--virtual-stages", str(self.virtual)]
        if self.zero1:
            f.append("--zero1")
        return f + ["--micro-batches", str(self.micro)] + list(self.extra_flags)

    def mesh(self):
        return f"{self.dp}x{self.tp}x{self.pp}"


_PART = re.compile(r"(dp|tp|pp)([1-9][0-9]*)$")


def parse(name):
    """A Strategy from its name (see the module docstring); StrategyError with the reason."""
    spec = LEGACY_NAMES.get(name, name)
    parts = spec.split("-")
    s = Strategy(name=name)
    mesh = parts[0]
    if mesh != "single":
        seen = set()
        for p in mesh.split("x"):
            m = _PART.match(p)
            if not m:
                raise StrategyError(f"{name}: '{p}' is not a degree (dpN, tpN or ppN joined by 'x', or 'single')")
            if m.group(1) in seen:
                raise StrategyError(f"{name}: {m.group(1)} given twice")
            seen.add(m.group(1))
            setattr(s, m.group(1), int(m.group(2)))
    for opt in parts[1:]:
        if opt in ("gpipe", "1f1b"):
            s.schedule = opt
        elif opt == "zbh1":  # '-' separates options: lora-compile's zb-h1
            s.schedule = "zb-h1"
        elif re.fullmatch(r"v[1-9][0-9]*", opt):
            s.schedule, s.virtual = "interleaved", int(opt[1:])
        elif opt == "zero1":
            s.zero1 = True
        elif re.fullmatch(r"m[1-9][0-9]*", opt):
            s.micro = int(opt[1:])
        else:
            raise StrategyError(f"{name}: unknown option '{opt}' (gpipe, 1f1b, zbh1, vV, mM, zero1)")
    if s.schedule and s.pp == 1:
        raise StrategyError(f"{name}: a pipeline schedule needs pp > 1")
    if s.zero1 and s.dp == 1:
        raise StrategyError(f"{name}: zero1 shards over data-parallel ranks and needs dp > 1")
    if s.pp > 1 and not s.schedule:
        s.schedule = "1f1b"
    return s


def resolve_alias(name, gpus=2, stages=2, nodes=2, gpus_per_node=2):
    """The canonical name of a seed spelling (data_parallel, ...); other names unchanged."""
    if name == "data_parallel":
        return f"dp{gpus}" if gpus > 1 else "single"
    if name in ("model_parallel", "tensor_parallel"):
        return f"tp{gpus}" if gpus > 1 else "single"
    if name == "pipeline_parallel":
        return f"pp{stages}-1f1b" if stages > 1 else "single"
    if name == "hybrid_parallel":
        mesh = "x".join(p for p in ((f"tp{gpus_per_node}" if gpus_per_node > 1 else ""),
                                     (f"pp{nodes}" if nodes > 1 else "")) if p)
        # Explicit schedule: the bare name tp2xpp2 is compare_strategies' GPipe strategy (LEGACY_NAMES).
        return (mesh + "-1f1b" if nodes > 1 else mesh) if mesh else "single"
    return name


def with_defaults(s, batch, micro_default=None):
    """Fills the micro-batch count and checks that the global batch divides over dp x micro-batches."""
    if not s.micro:
        s.micro = micro_default or (2 * s.pp if s.pp > 1 else 2)
    if s.schedule == "interleaved" and s.micro % s.pp:
        raise StrategyError(f"{s.name}: the interleaved schedule runs micro-batches in groups of pp: "
                            f"{s.micro} micro-batches is not a multiple of pp {s.pp}")
    if batch % (s.dp * s.micro):
        raise StrategyError(f"{s.name}: the global batch {batch} does not divide into dp {s.dp} x "
                            f"{s.micro} micro-batches (choose --batch as a multiple of {s.dp * s.micro})")
    return s


def ranks_of(flags):
    """World size of lora-compile flags (the degrees multiply)."""
    n = 1
    for k in ("--dp", "--tp", "--pp"):
        if k in flags:
            n *= int(flags[flags.index(k) + 1])
    return n
