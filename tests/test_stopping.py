import numpy as np
import pytest
import torch

from deepprior.stopping import WindowedVariance, replay


def trajectory(n_iter, t_min, seed=0, shape=(1, 3, 24, 24)):
    """Outputs that wander with an amplitude falling to a minimum at t_min, then rising."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(shape, generator=g)
    for t in range(1, n_iter + 1):
        amp = 0.01 + 0.002 * abs(t - t_min)
        yield t, base + amp * torch.randn(shape, generator=g)


def test_stops_near_the_known_minimum_of_the_variance():
    window, t_min = 20, 150
    wv = WindowedVariance(window=window, patience=60)
    stopped = None
    for t, out in trajectory(400, t_min):
        wv.update(t, out)
        if wv.should_stop:
            stopped = t
            break
    assert stopped is not None
    # the window variance at t covers [t - W + 1, t], so its minimum sits about W/2 after t_min
    assert abs(wv.best_iteration - (t_min + window // 2)) <= 10
    assert stopped == wv.best_iteration + 60


def test_minima_before_start_are_not_taken_and_still_set_the_bar():
    # The variance is lowest near t_min = 150; from start = 250 on it only rises, so no value
    # past the floor is a minimum: the rule never fires and holds nothing (the fit would run
    # to its cap and return its last output).
    wv = WindowedVariance(window=20, patience=60, start=250)
    for t, out in trajectory(500, 150):
        wv.update(t, out)
        assert not wv.should_stop
    assert wv.best_iteration is None
    assert min(wv.curve, key=lambda c: c[1])[0] < 250  # the earlier minimum is still on the curve


def two_dips(n_iter, shallow, deep, seed=0, shape=(1, 3, 24, 24)):
    """Outputs whose wandering has a shallow early dip and a deeper later one."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(shape, generator=g)
    for t in range(1, n_iter + 1):
        amp = min(0.03 + 0.002 * abs(t - shallow), 0.01 + 0.002 * abs(t - deep))
        yield t, base + amp * torch.randn(shape, generator=g)


def test_a_deeper_minimum_past_start_is_taken():
    window, start, deep = 20, 200, 320
    wv = WindowedVariance(window=window, patience=60, start=start)
    stopped = None
    for t, out in two_dips(600, shallow=100, deep=deep):
        wv.update(t, out)
        if wv.should_stop:
            stopped = t
            break
    assert abs(wv.best_iteration - (deep + window // 2)) <= 10
    assert stopped == wv.best_iteration + 60


def test_replay_on_the_curve_makes_the_same_decision():
    for start in (0, 200):
        wv = WindowedVariance(window=20, patience=60, start=start)
        fired = None
        for t, out in two_dips(600, shallow=100, deep=320):
            wv.update(t, out)
            if wv.should_stop and fired is None:
                fired = t
        assert fired is not None
        assert replay(wv.curve, patience=60, start=start) == (fired, fired - 60)
        # thinned to every 10th iteration: the same answer to within 10 iterations
        at, held = replay(wv.curve[::10], patience=60, start=start)
        assert abs(at - fired) <= 10 and abs(held - (fired - 60)) <= 10
    # a floor past every minimum: nothing fires, nothing is held
    assert replay(wv.curve, patience=60, start=10**6) == (None, None)


def test_never_stops_before_the_window_fills():
    wv = WindowedVariance(window=50, patience=1)
    for t in range(1, 50):
        assert wv.update(t, torch.zeros(1, 1, 4, 4)) is False
        assert not wv.should_stop
        assert not wv.filled
    wv.update(50, torch.zeros(1, 1, 4, 4))
    assert wv.filled


def test_pixel_subset_finds_the_same_point_as_all_pixels():
    shape = (1, 3, 96, 96)  # 27,648 values > the 4,096-value subset
    full = WindowedVariance(window=30, patience=10**9, max_samples=10**9)
    sub = WindowedVariance(window=30, patience=10**9, max_samples=4096, generator=torch.Generator().manual_seed(1))
    for t, out in trajectory(300, 120, shape=shape):
        full.update(t, out)
        sub.update(t, out)
    assert abs(full.best_iteration - sub.best_iteration) <= 3
    f = np.array([v for _, v in full.curve])
    s = np.array([v for _, v in sub.curve])
    assert np.corrcoef(f, s)[0, 1] > 0.99


def test_window_must_be_at_least_two():
    with pytest.raises(ValueError):
        WindowedVariance(window=1)


def test_running_sums_match_the_direct_window_variance():
    g = torch.Generator().manual_seed(0)
    wv = WindowedVariance(window=7, patience=10**9, max_samples=10**9)
    outs = [torch.rand(1, 3, 5, 4, generator=g) * (1 + t % 5) for t in range(60)]
    for t, out in enumerate(outs, start=1):
        wv.update(t, out)
    direct = torch.stack(outs[-7:]).double().var(dim=0, unbiased=False).mean().item()
    assert wv.curve[-1][1] == pytest.approx(direct, rel=1e-9)


# ----------------------------------------------------------------- self-validation (held-out pixels)

from deepprior.stopping import HeldOutLoss, MinimumRule, holdout_mask  # noqa: E402


def test_held_out_rule_stops_at_the_known_minimum_of_its_loss():
    t_min = 230
    rule = HeldOutLoss(lambda r: r.mean(), patience=50)
    stopped = None
    for t in range(1, 1000):
        rule.update(t, torch.tensor([(t - t_min) ** 2 * 1e-6 + 0.01]))
        if rule.should_stop:
            stopped = t
            break
    assert rule.best_iteration == t_min
    assert stopped == t_min + 50
    assert rule.watches == "result" and WindowedVariance().watches == "output"


def test_replay_decides_as_the_live_rule_for_either_curve():
    rule = MinimumRule(patience=30, start=10)
    values = [1.0, 0.5, 0.6, 0.4, 0.45] + [0.5] * 40
    fired = None
    for t, v in enumerate(values, start=1):
        rule.observe(t * 10, v)
        if rule.should_stop and fired is None:
            fired = t * 10
    assert (fired, rule.best_iteration) == replay([(t * 10, v) for t, v in enumerate(values, start=1)], 30, 10)


def test_holdout_mask_takes_the_fraction_of_observed_pixels_only_and_is_seeded():
    observed = np.ones((40, 50), dtype=bool)
    observed[:, :25] = False
    held = holdout_mask(observed, 0.05, torch.Generator().manual_seed(3))
    assert held.sum() == round(0.05 * observed.sum())
    assert not (held & ~observed).any()
    again = holdout_mask(observed, 0.05, torch.Generator().manual_seed(3))
    other = holdout_mask(observed, 0.05, torch.Generator().manual_seed(4))
    assert (held == again).all() and (held != other).any()
    # never everything, never nothing
    tiny = np.zeros((3, 3), dtype=bool)
    tiny[0, :2] = True
    assert holdout_mask(tiny, 0.99, torch.Generator().manual_seed(0)).sum() == 1
    assert holdout_mask(observed, 1e-9, torch.Generator().manual_seed(0)).sum() == 1
