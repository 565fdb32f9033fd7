"""The demo's accuracy-vs-FLOPs Pareto front: exactly the methods no other method beats on both axes."""

from dpvr.demo.frontier import frontier, pareto_front


def _p(name, saving, acc, saving_7b=None):
    return {"method": name, "flops_saving": saving, "overall": acc, "flops_saving_7b": saving_7b}


def test_front_keeps_exactly_the_undominated_points():
    points = [_p("vanilla", 0.0, 65.2), _p("lf", -0.002, 60.7), _p("kv", 0.057, 64.8), _p("fastv-50", 0.273, 60.5),
              _p("fastv-25", 0.405, 58.7), _p("vtw@6", 0.179, 58.7), _p("tie", 0.273, 60.5), _p("none", None, 99.0)]
    names = [p["method"] for p in pareto_front(points, "flops_saving")]
    # lf saves less and scores less than vanilla; vtw@6 is beaten by fastv-50; an exact tie keeps both; no-FLOPs skipped
    assert names == ["vanilla", "kv", "fastv-50", "tie", "fastv-25"]


def test_frontier_sentences_name_the_front_per_shape_and_skip_blind_runs():
    methods = [_p("vanilla", 0.0, 65.0, 0.0), _p("lf", -0.002, 60.0, 0.29), _p("vanilla [blind]", 0.5, 99.0, 0.5)]
    f = frontier(methods, " [blind]")
    assert f["tiny"]["methods"] == ["vanilla"]
    assert f["7b"]["methods"] == ["vanilla", "lf"]  # at 7B, LF's saving puts it on the front
    assert "vanilla, lf." in f["7b"]["sentence"] and "LLaVA-1.5-7B" in f["7b"]["sentence"]
