"""The phantom world: images show what the parameters say, reports agree with labels."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from rv2.demo.radiology_reports import impression, labels, write_report
from rv2.demo.sites import GROUPS, SITES
from rv2.demo.world import Case, Finding, read_markers, render, sample_case


def _cases(n=60, site="mimic", seed=0):
    return [sample_case(seed, site, i) for i in range(n)]


@pytest.mark.parametrize("site", sorted(SITES))
@pytest.mark.parametrize("size", [64, 96])
def test_markers_decode_to_the_demographics(site, size):
    ages = []
    for case in _cases(50, site):
        m = read_markers(render(case, size))
        assert m["sex"] == case.sex, case
        assert m["group"] == case.group, case
        ages.append(m["age"] - case.age)
    err = np.abs(ages)
    # the bar is quantised to pixels: 90 years over AGE_SPAN * size pixels
    assert err.max() <= 90 / (0.56 * size) * 1.6 + 0.5, err.max()


def test_marker_reader_on_float_and_rgb_inputs():
    case = sample_case(3, "mimic", 5)
    img = render(case, 64)
    a = read_markers(img)
    b = read_markers(img.astype(np.float32) / 255)
    c = read_markers(np.repeat(img[..., None], 3, axis=-1))
    keys = ("sex", "group", "age")
    assert [a[k] for k in keys] == [b[k] for k in keys] == [c[k] for k in keys]
    assert a["sex_margin"] == pytest.approx(b["sex_margin"], abs=1e-6)
    with pytest.raises(ValueError, match="2-D image"):
        read_markers(np.zeros((2, 3, 4, 5)))


def test_no_group_marker_for_subjects_outside_the_four_groups():
    case = dataclasses.replace(sample_case(0, "mimic", 1), group=None)
    assert read_markers(render(case, 64))["group"] is None


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = render(sample_case(7, "mimic", 3), 64, seed=7)
    b = render(sample_case(7, "mimic", 3), 64, seed=7)
    c = render(sample_case(8, "mimic", 3), 64, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (64, 64)


def _normal_case(**kw) -> Case:
    base = dataclasses.replace(sample_case(11, "mimic", 2), view="PA", findings=[], ctr=0.43,
                               dome_l=0.0, dome_r=0.0, **kw)
    return base


def _diff(finding: Finding, **kw) -> np.ndarray:
    """Image with the finding minus the same case without it (same noise)."""
    plain = _normal_case()
    sick = dataclasses.replace(plain, findings=[finding], **kw)
    return render(sick, 96).astype(float) - render(plain, 96).astype(float)


def _halves(d: np.ndarray, rows=slice(None)) -> tuple[float, float]:
    w = d.shape[1] // 2
    return float(d[rows, :w].mean()), float(d[rows, w:].mean())


def test_effusion_fills_the_named_base():
    d = _diff(Finding("Pleural Effusion", "left", 1.0))  # patient's left = image right
    lower = slice(50, 85)
    right_img, left_img = _halves(d, lower)
    assert left_img > 8 and left_img > 5 * abs(right_img)
    assert abs(_halves(d, slice(5, 35))[1]) < 2  # the apex is untouched


def test_pneumothorax_darkens_the_named_apex():
    d = _diff(Finding("Pneumothorax", "right", 1.0))  # patient's right = image left
    right_img, left_img = _halves(d, slice(10, 50))
    assert right_img < -1.5 and abs(left_img) < 0.3


def test_consolidation_edema_atelectasis_are_dense_where_named():
    d = _diff(Finding("Consolidation", "right", 1.0))
    r, l = _halves(d, slice(15, 80))
    assert r > 3 and abs(l) < 0.5
    d = _diff(Finding("Edema", "bilateral", 1.0))
    r, l = _halves(d, slice(20, 80))
    assert r > 3 and l > 3
    d = _diff(Finding("Atelectasis", "left", 1.0), dome_l=0.035)
    r, l = _halves(d, slice(40, 85))
    assert l > 2 and l > 4 * abs(r)


def test_cardiomegaly_widens_the_heart():
    plain = _normal_case()
    big = dataclasses.replace(plain, ctr=0.66, findings=[Finding("Cardiomegaly", "bilateral", 1.0)])
    a, b = render(plain, 96).astype(float), render(big, 96).astype(float)
    band = slice(55, 68)  # the heart's widest rows
    # lungs lateral to a normal heart turn into heart: brighter mid-band
    assert (b[band, 25:71] - a[band, 25:71]).mean() > 5


def test_support_device_line_is_bright():
    d = _diff(Finding("Support Devices", "bilateral", 1.0))
    assert d.max() > 60 and (d > 40).sum() < 200  # a thin line, not a region


def test_sites_differ_in_acquisition():
    from scipy.ndimage import gaussian_filter

    case = sample_case(0, "mimic", 4)
    a = render(case, 64, site="mimic").astype(float)
    b = render(case, 64, site="chexpert").astype(float)
    # chexpert's scanners: flatter contrast (smoothed anatomy spans a smaller range) ...
    span = [np.subtract(*np.percentile(gaussian_filter(x, 1.5)[12:55, 8:56], [95, 5])) for x in (a, b)]
    assert span[1] < 0.9 * span[0]
    # ... and more noise in the flat collimated strip (right of the age bar)
    noise = [x[59:63, 50:63].std() for x in (a, b)]
    assert noise[1] > 1.2 * noise[0]


def test_site_demographic_mixes_follow_their_settings():
    for name, site in SITES.items():
        cases = _cases(600, name, seed=1)
        groups = [c.group for c in cases if c.group]
        frac = np.array([groups.count(g) for g in GROUPS]) / len(groups)
        target = np.asarray(site.race_mix) / sum(site.race_mix)
        assert np.abs(frac - target).max() < 0.06, (name, frac, target)
        assert abs(np.mean([c.sex == "F" for c in cases]) - site.p_female) < 0.07


def test_reports_and_labels_agree_with_the_parameters():
    seen = set()
    for case in _cases(300):
        lab = labels(case)
        text = write_report(case)
        imp = impression(case)
        assert "FINDINGS:" in text and "IMPRESSION:" in text
        assert text.split("IMPRESSION:")[1].strip() == imp
        for f in case.findings:
            seen.add(f.name)
            assert lab[f.name] == (-1.0 if f.uncertain else 1.0)
            key = {"Pleural Effusion": "pleural effusion", "Support Devices": "catheter",
                   "Cardiomegaly": "cardiomegaly"}.get(f.name, f.name.lower())
            if not case.nondescriptive:
                assert key in imp.lower(), (f, imp)
                if f.uncertain:
                    assert "possible" in imp.lower() or "cannot exclude" in imp.lower()
        asserted = [f for f in case.findings if f.name != "Support Devices"]
        assert (lab["No Finding"] == 1.0) == (not asserted)
        if not case.finding("Pneumothorax"):
            assert lab["Pneumothorax"] == 0.0
        if not case.finding("Cardiomegaly"):
            assert math.isnan(lab["Cardiomegaly"])
        assert (lab["Pneumonia"] == 1.0) == case.pneumonia
    assert {"Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema",
            "Atelectasis"} <= seen
    assert any(c.normal for c in _cases(300))
