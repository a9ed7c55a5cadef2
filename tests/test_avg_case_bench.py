"""benchmarks/avg_case_robustness.py's matched-error core on the spec's 3-class linear model, where the
Taylor estimate is exact (robustness spec §1: W = [[1,0],[0,1],[−1,−1]], x = (1, 0.5), σ = 0.5 →
p = 0.754492): the matched MC copies follow the binomial formula written out here, the speed-up lower
bound caps them at the truth's budget, and the σ sweep reports the crossover from its own rows."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")
_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "avg_case_robustness.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_avg_case", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def linear_model() -> torch.nn.Module:
    m = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    return m.eval()


def test_matched_copies_follow_the_binomial_formula(bench):
    x = torch.tensor([[1.0, 0.5]]).repeat(4, 1)
    p_true = torch.full((4,), 0.754492, dtype=torch.float64)
    curve, mc_time_at = bench.mc_matched(linear_model(), x, 0.5, p_true, max_n=256)
    assert [n for n, _, _ in curve] == [8, 16, 32, 64, 128, 256]
    spread = math.sqrt(2 * 0.754492 * (1 - 0.754492) / math.pi)
    t, n = mc_time_at(0.01)
    assert n == pytest.approx((spread / 0.01) ** 2, rel=1e-9)
    assert t > 0 and mc_time_at(10.0)[1] == 1.0  # never fewer than one copy


def test_taylor_is_exact_and_the_lower_bound_caps_at_the_truth(bench):
    model, x = linear_model(), torch.tensor([[1.0, 0.5]]).repeat(4, 1)
    p_true = torch.full((4,), 0.754492, dtype=torch.float64)
    per_copy = 1e-3

    def mc_time_at(err):
        n = max(1.0, (0.3 / err) ** 2)
        return per_copy * n, n

    rows = bench.compare_estimators(model, x, 0.5, p_true, mc_time_at, mc_truth=100)
    assert rows["taylor"]["mean_abs_error"] <= 2e-4  # the MVN CDF's tolerance
    assert rows["mmse"]["mean_abs_error"] <= 2e-4    # smoothing leaves a linear model unchanged
    assert rows["softmax"]["mean_abs_error"] == pytest.approx(abs(0.592201 - 0.754492), abs=1e-5)
    for r in rows.values():
        assert r["matched_mc_s"] == pytest.approx(per_copy * r["matched_mc_samples"], rel=1e-3, abs=1e-4)
        cap = min(1.0, 100 / r["matched_mc_samples"])
        assert r["speedup_lower_bound"] == pytest.approx(r["speedup_vs_mc"] * cap, rel=0.01, abs=0.02)
    assert rows["taylor"]["speedup_lower_bound"] < rows["taylor"]["speedup_vs_mc"]  # capped: n ≫ 100


def test_sweep_reports_crossover_and_goal_from_its_rows(bench, capsys):
    model, x = linear_model(), torch.tensor([[1.0, 0.5], [0.3, 0.2]])
    bench.sigma_sweep(model, x, [0.05, 0.5], 64, {"model": "linear"})
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["sigmas"] == [0.05, 0.5] and out["model"] == "linear"
    for name, cross in out["crossover_sigma"].items():
        paying = [s for s in out["sigmas"]
                  if out["per_sigma"][str(s)]["estimators"][name]["speedup_lower_bound"] >= 1]
        assert cross == (max(paying) if paying else None)
    for s in out["sigmas"]:
        rows = out["per_sigma"][str(s)]["estimators"]
        assert out["goal_met_by"][str(s)] == [k for k, r in rows.items()
                                               if r["mean_abs_error"] <= 0.01 and r["speedup_lower_bound"] >= 10]
