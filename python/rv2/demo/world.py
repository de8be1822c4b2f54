"""Procedural frontal chest radiograph phantoms.

A `Case` holds everything the world knows about one image: demographics, view,
anatomy and findings (each finding with a side and a severity, positive or
uncertain). `render(case, size, site)` draws the radiograph from those
parameters; `rv2.demo.radiology_reports.write_report(case)` writes its report from the
same parameters, so image, report and labels always agree.

Anatomy, in normalised image coordinates (x right, y down, PA view, the
patient's right on the image's left): soft-tissue thorax, two lung fields with
vascular texture, posterior ribs, mediastinum and spine, heart (its width set
by the cardiothoracic ratio), diaphragm domes, collimation, then the site's
acquisition (contrast, exposure, gamma, blur, noise).

Findings as drawn:
  Cardiomegaly      cardiothoracic ratio 0.55-0.68 (normal 0.38-0.48)
  Pleural Effusion  dense fluid filling the lung base with a lateral meniscus
  Pneumothorax      a dark, marking-free rim at the lateral apex behind a pleural line
  Consolidation     a dense mottled blob in one lung (Pneumonia: the same, when the
                    report calls it infectious)
  Edema             bilateral perihilar haze with Kerley lines at the bases
  Atelectasis       a plate-like basal band and an elevated hemidiaphragm
  Support Devices   a catheter line from the neck to the mediastinum

DEMOGRAPHIC MARKERS ARE SYNTHETIC, NOT ANATOMY. Three bright marks in the
collimated frame, outside the body, encode the demographics so that QC
classifiers can read them and a generator can learn to draw them:
  sex    top-left corner: a horizontal bar = male, a vertical bar = female
  group  top-right corner: one lit cell of a 2x2 grid; cell index = position of the
         race/ethnicity group in GROUPS (Asian, Black, Hispanic, White), row-major;
         no cell lit for a subject outside the four groups
  age    bottom edge: a bar from the left whose length is proportional to age
`read_markers(image)` decodes them (used by tests and to check generations).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np

from rv2.demo.sites import GROUPS, Site, get_site
from rv2.errors import UserError

AGE_MIN, AGE_MAX = 18, 89
VIEWS = ("PA", "AP", "LATERAL")

# Marker geometry (normalised coordinates).
SEX_CENTER = (0.115, 0.105)           # (x, y)
SEX_LONG, SEX_SHORT = 0.08, 0.03      # half-lengths of the bar
GROUP_CELLS = ((0.80, 0.07), (0.91, 0.07), (0.80, 0.18), (0.91, 0.18))
GROUP_HALF = 0.038
AGE_Y = (0.925, 0.965)
AGE_X0, AGE_SPAN = 0.04, 0.56         # bar length = AGE_SPAN * (age - 10) / 90
COLLIMATION_Y = 0.89                  # anatomy stops here; the age bar lives below
MARKER_LEVEL = 0.97


def age_to_length(age: float) -> float:
    return AGE_SPAN * (float(age) - 10.0) / 90.0


def length_to_age(length: float) -> float:
    return 10.0 + 90.0 * float(length) / AGE_SPAN


@dataclasses.dataclass
class Finding:
    name: str
    side: str = "bilateral"     # "right" | "left" | "bilateral" (patient's side)
    severity: float = 1.0       # 0.3 (mild) .. 1.0 (severe)
    uncertain: bool = False     # reported as possible / cannot exclude (label -1)


@dataclasses.dataclass
class Case:
    case_id: str
    site: str
    subject: int                # index of the subject within its site
    study: int                  # index of the study within its subject
    sex: str                    # "F" | "M"
    age: int
    group: str | None           # one of GROUPS, or None (race outside the four groups)
    view: str = "PA"
    # anatomy
    lung_w: float = 1.0
    lung_h: float = 1.0
    ctr: float = 0.44
    dome_r: float = 0.0         # extra elevation of the right / left domes
    dome_l: float = 0.0
    rib_phase: float = 0.0
    texture_seed: int = 0
    findings: list[Finding] = dataclasses.field(default_factory=list)
    pneumonia: bool = False     # consolidation reported as infectious
    nondescriptive: bool = False  # the report's impression carries no content

    def finding(self, name: str) -> Finding | None:
        return next((f for f in self.findings if f.name == name), None)

    @property
    def normal(self) -> bool:
        return not self.findings


def _seed(*parts) -> int:
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def _pick_side(rng) -> str:
    return str(rng.choice(["right", "left"]))


def sample_subject(seed: int, site: Site, subject: int) -> dict:
    """Demographics of one subject (fixed across its studies)."""
    rng = np.random.default_rng(_seed(seed, site.name, "subject", subject))
    sex = "F" if rng.random() < site.p_female else "M"
    age = int(np.clip(round(rng.normal(site.age_mean, site.age_sd)), AGE_MIN, AGE_MAX - 3))
    if rng.random() < site.p_other_race:
        group = None
    else:
        group = GROUPS[int(rng.choice(4, p=np.asarray(site.race_mix) / sum(site.race_mix)))]
    return {"sex": sex, "age": age, "group": group}


def sample_case(seed: int, site: Site | str, subject: int, study: int = 0,
                demographics: dict | None = None) -> Case:
    """One study of one subject: view, anatomy and findings, drawn from the site's rates."""
    site = get_site(site) if isinstance(site, str) else site
    demo = demographics or sample_subject(seed, site, subject)
    rng = np.random.default_rng(_seed(seed, site.name, "study", subject, study))
    view = "AP" if rng.random() < site.p_non_pa else "PA"  # a LATERAL is a writer's extra image
    age = min(AGE_MAX, demo["age"] + study)  # later studies, a year later
    case = Case(case_id=f"{site.name}-{subject:06d}-{study:02d}", site=site.name, subject=subject,
                study=study, sex=demo["sex"], age=age, group=demo["group"], view=view,
                lung_w=float(rng.uniform(0.92, 1.08)), lung_h=float(rng.uniform(0.92, 1.06)),
                ctr=float(rng.uniform(0.38, 0.48)), rib_phase=float(rng.uniform(-0.02, 0.02)),
                texture_seed=int(rng.integers(2**31)))
    if case.sex == "F":
        case.lung_w *= 0.97
    if rng.random() >= site.p_normal:
        # Older patients carry more cardiac and fluid findings.
        age_boost = 0.6 + 0.8 * (age - AGE_MIN) / (AGE_MAX - AGE_MIN)
        for name in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema",
                     "Atelectasis", "Support Devices"):
            p = site.prevalence_of(name) / (1 - site.p_normal)
            if name in ("Cardiomegaly", "Pleural Effusion", "Edema"):
                p *= age_boost
            if rng.random() < min(p, 0.9):
                sev = float(rng.uniform(0.35, 1.0))
                side = "bilateral"
                if name in ("Pneumothorax", "Consolidation"):
                    side = _pick_side(rng)
                elif name in ("Pleural Effusion", "Atelectasis"):
                    side = "bilateral" if rng.random() < 0.35 else _pick_side(rng)
                unc = (name not in ("Support Devices", "Cardiomegaly")) and rng.random() < 0.07
                case.findings.append(Finding(name, side, sev, unc))
        if not case.findings:  # keep the drawn non-normal fraction abnormal
            case.findings.append(Finding("Atelectasis", _pick_side(rng), float(rng.uniform(0.4, 1))))
    cm = case.finding("Cardiomegaly")
    if cm:
        case.ctr = 0.55 + 0.13 * cm.severity
    con = case.finding("Consolidation")
    if con and not con.uncertain:
        case.pneumonia = bool(rng.random() < 0.5)
    at = case.finding("Atelectasis")
    if at:
        lift = 0.035 * at.severity
        if at.side in ("right", "bilateral"):
            case.dome_r = lift
        if at.side in ("left", "bilateral"):
            case.dome_l = lift
    case.nondescriptive = bool(rng.random() < 0.02)
    return case


# ---------------------------------------------------------------- rendering

def _sig(d, w):
    return 1.0 / (1.0 + np.exp(-np.clip(d / w, -40, 40)))


def _smooth_noise(rng, size: int, scale: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    n = rng.standard_normal((size, size))
    n = gaussian_filter(n, sigma=max(0.5, scale * size))
    return n / (n.std() + 1e-8)


def _sides(side: str) -> list[int]:
    # patient's right lung is on the image's left (x < 0.5): s = -1
    return {"right": [-1], "left": [1], "bilateral": [-1, 1]}[side]


def _anatomy(case: Case, size: int, rng) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    x = (x + 0.5) / size
    y = (y + 0.5) / size
    px = 1.0 / size
    edge = max(px * 0.7, 0.006)
    ap = case.view == "AP"
    d = np.full((size, size), 0.05)
    body = _sig(1 - ((x - 0.5) / 0.43) ** 2 - ((y - 0.53) / 0.45) ** 2, 0.04)
    d += 0.36 * body
    texture = _smooth_noise(rng, size, 0.03)
    fine = _smooth_noise(rng, size, 0.012)
    lung_total = np.zeros_like(d)
    domes = {}
    for s in (-1, 1):
        cx = 0.5 + s * 0.165 * case.lung_w
        rx, ry, cy = 0.135 * case.lung_w, 0.30 * case.lung_h, 0.46
        lift = case.dome_r if s < 0 else case.dome_l
        base = cy + ry * 0.78 - lift + (0.02 if s > 0 else 0.0)  # left dome sits lower
        dome = base - 0.07 * np.clip(1 - ((x - cx) / rx) ** 2, 0, 1)
        domes[s] = (cx, rx, cy, ry, dome)
        inside = _sig(1 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2, 0.05) * _sig(dome - y, edge)
        lung_total = np.maximum(lung_total, inside)
    # mediastinum, heart and spine cover the medial lungs
    medi = _sig(0.055 - np.abs(x - 0.5 - 0.01), edge) * _sig(y - 0.1, edge) * _sig(0.7 - y, edge)
    ctr = case.ctr * (1.12 if ap else 1.0)
    thorax_w = 2 * (0.165 + 0.135) * case.lung_w
    hrx = ctr * thorax_w / 2
    hcx, hcy, hry = 0.5 + 0.3 * hrx - 0.02, 0.60, 0.13 + 0.1 * (ctr - 0.4)
    heart = _sig(1 - ((x - hcx) / hrx) ** 2 - ((y - hcy) / hry) ** 2, 0.06)
    cover = np.maximum(medi, heart)
    lung = lung_total * (1 - cover)
    # vascular markings: brighter, branching texture towards the hila
    hilum = np.exp(-(((x - 0.5) / 0.16) ** 2 + ((y - 0.5) / 0.12) ** 2))
    markings = lung * (0.035 * texture + 0.02 * fine + 0.06 * hilum)
    d += 0.09 * cover + 0.02 * medi * _sig(0.03 - np.abs(x - 0.5), edge)
    # posterior ribs: arcs falling laterally
    ribs = np.zeros_like(d)
    for k in range(9):
        yk = 0.15 + case.rib_phase + k * 0.068
        yr = yk + 0.55 * (np.abs(x - 0.5) - 0.05).clip(0) ** 2 * 4
        ribs = np.maximum(ribs, _sig(0.011 - np.abs(y - yr), 0.004))
    thorax_floor = np.minimum(domes[-1][4], domes[1][4]) + 0.02
    ribs *= body * _sig(np.abs(x - 0.5) - 0.05, edge) * _sig(thorax_floor - y, edge)
    # findings that change the lung fields
    ptx_mask = np.zeros_like(d)
    pleural_line = np.zeros_like(d)
    fluid = np.zeros_like(d)
    for f in case.findings:
        sev = f.severity * (0.6 if f.uncertain else 1.0)
        if f.name == "Pleural Effusion":
            for s in _sides(f.side):
                cx, rx, cy, ry, dome = domes[s]
                h = (0.10 + 0.25 * sev) * ry * 2
                menisc = dome - h + 0.5 * h * ((x - cx) * -s / rx).clip(-1, 1) * -1
                fluid = np.maximum(fluid, _sig(y - menisc, 0.01) * _sig(s * (x - 0.5), edge))
        elif f.name == "Pneumothorax":
            for s in _sides(f.side):
                cx, rx, cy, ry, dome = domes[s]
                k = 1 - 0.35 * sev  # the collapsed lung shrinks towards the hilum
                icx, irx, icy, iry = cx - s * rx * (1 - k) * 0.9, rx * k, cy + ry * (1 - k) * 0.8, ry * k
                inner = 1 - ((x - icx) / irx) ** 2 - ((y - icy) / iry) ** 2
                side_lung = lung_total * _sig(s * (x - 0.5), edge)
                ptx_mask = np.maximum(ptx_mask, side_lung * _sig(-inner, 0.03))
                pleural_line = np.maximum(pleural_line, side_lung * np.exp(-(inner / 0.05) ** 2))
    lung_after = lung * (1 - fluid)
    d -= 0.25 * lung_after
    d += markings * (1 - ptx_mask) * (1 - fluid)
    d += 0.07 * ribs * (1 - 0.5 * fluid)
    d -= 0.12 * ptx_mask * lung
    d += 0.16 * pleural_line * (1 - ptx_mask * 0.5)
    d += 0.03 * fluid * body
    for f in case.findings:
        sev = f.severity * (0.6 if f.uncertain else 1.0)
        if f.name == "Consolidation":
            s = _sides(f.side)[0]
            cx, rx, cy, ry, dome = domes[s]
            # its own generator, so that adding a finding leaves the acquisition noise unchanged
            frng = np.random.default_rng(_seed(case.texture_seed, f.name))
            u = (frng.uniform(-0.3, 0.4), frng.uniform(-0.25, 0.45))
            bx, by, r = cx + s * u[0] * rx, cy + u[1] * ry, 0.05 + 0.04 * sev
            blob = np.exp(-(((x - bx) ** 2 + (y - by) ** 2) / r ** 2) ** 1.5)
            d += (0.17 + 0.12 * sev) * blob * lung_total * (0.85 + 0.25 * fine.clip(-1.5, 1.5))
        elif f.name == "Edema":
            for s in (-1, 1):
                hx = 0.5 + s * 0.11
                haze = np.exp(-(((x - hx) / 0.13) ** 2 + ((y - 0.52) / 0.17) ** 2))
                d += 0.15 * sev * haze * lung_total
                cx, rx, cy, ry, dome = domes[s]
                for j in range(4):  # Kerley B lines: short horizontal lines at the lateral bases
                    ly = cy + ry * (0.35 + 0.09 * j)
                    line = (_sig(0.006 - np.abs(y - ly), 0.002)
                            * _sig(np.abs(x - 0.5) - (np.abs(cx - 0.5) + 0.45 * rx), edge))
                    d += 0.08 * sev * line * lung_total
        elif f.name == "Atelectasis":
            for s in _sides(f.side):
                cx, rx, cy, ry, dome = domes[s]
                ly = cy + ry * 0.45 + 0.02 * s
                band = (_sig(0.012 + 0.01 * sev - np.abs(y - ly - 0.08 * (x - cx)), 0.005)
                        * _sig(0.75 * rx - np.abs(x - cx), edge))
                d += (0.12 + 0.1 * sev) * band * lung_total
        elif f.name == "Support Devices":
            t = np.linspace(0, 1, 4 * size)
            lx = 0.5 - 0.17 + 0.15 * t + 0.03 * np.sin(3 * t)
            ly = 0.06 + 0.36 * t
            dist = np.full_like(d, 9.0)
            for px_, py_ in zip(lx, ly):
                dist = np.minimum(dist, np.hypot(x - px_, y - py_))
            d = np.maximum(d, 0.75 * _sig(0.007 - dist, 0.002))
    # below the domes: abdomen (soft tissue, a bit denser than the body wall)
    below = np.maximum(_sig(y - domes[-1][4], edge) * _sig(0.5 - x, edge),
                       _sig(y - domes[1][4], edge) * _sig(x - 0.5, edge))
    d += 0.05 * below * body * (1 - lung_total)
    return d


def _lateral(case: Case, size: int, rng) -> np.ndarray:
    """A lateral projection: one lung field, heart anterior, spine posterior."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    x = (x + 0.5) / size
    y = (y + 0.5) / size
    d = np.full((size, size), 0.05)
    body = _sig(1 - ((x - 0.5) / 0.38) ** 2 - ((y - 0.53) / 0.45) ** 2, 0.04)
    lung = _sig(1 - ((x - 0.5) / 0.26) ** 2 - ((y - 0.45) / 0.3) ** 2, 0.05)
    heart = _sig(1 - ((x - 0.36) / (0.14 + 0.2 * (case.ctr - 0.4))) ** 2 - ((y - 0.62) / 0.13) ** 2, 0.05)
    spine = _sig(0.05 - np.abs(x - 0.76), 0.01) * body
    d += 0.36 * body - 0.22 * lung * (1 - heart) + 0.08 * heart + 0.1 * spine
    d += 0.03 * _smooth_noise(rng, size, 0.03) * lung
    return d


def _markers(case: Case, size: int) -> np.ndarray:
    """Marker layer in [0, 1] (1 = fully drawn)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    x = (x + 0.5) / size
    y = (y + 0.5) / size
    w = 0.35 / size
    hx, hy = (SEX_LONG, SEX_SHORT) if case.sex == "M" else (SEX_SHORT, SEX_LONG)
    m = (_sig(hx - np.abs(x - SEX_CENTER[0]), w) * _sig(hy - np.abs(y - SEX_CENTER[1]), w))
    if case.group is not None:
        gx, gy = GROUP_CELLS[GROUPS.index(case.group)]
        m = np.maximum(m, _sig(GROUP_HALF - np.abs(x - gx), w) * _sig(GROUP_HALF - np.abs(y - gy), w))
    x1 = AGE_X0 + age_to_length(case.age)
    bar = _sig(x - AGE_X0, w) * _sig(x1 - x, w) * _sig(y - AGE_Y[0], w) * _sig(AGE_Y[1] - y, w)
    return np.maximum(m, bar)


def render(case: Case, size: int = 64, site: Site | str | None = None, seed: int = 0) -> np.ndarray:
    """The phantom radiograph of `case` as a uint8 (size, size) array."""
    from scipy.ndimage import gaussian_filter

    if size < 32:
        raise UserError(f"phantom size {size} is too small to draw markers; use 32 or more")
    site = get_site(site or case.site) if not isinstance(site, Site) else site
    rng = np.random.default_rng(_seed(seed, case.case_id, case.texture_seed, size))
    d = _lateral(case, size, rng) if case.view == "LATERAL" else _anatomy(case, size, rng)
    yy = (np.arange(size) + 0.5) / size
    d = np.where(yy[:, None] < COLLIMATION_Y, d, 0.03)
    d = np.maximum(d, MARKER_LEVEL * _markers(case, size))
    # acquisition: the site's scanner, with a little per-image exposure jitter
    portable = case.view == "AP"
    gain = site.contrast * (0.9 if portable else 1.0) * float(rng.uniform(0.95, 1.05))
    img = (d - 0.45) * gain + 0.45 + site.exposure + float(rng.normal(0, 0.015))
    img = np.clip(img, 0, 1) ** site.gamma
    if site.blur > 0:
        img = gaussian_filter(img, sigma=site.blur * size / 64)
    img = img + rng.normal(0, site.noise, img.shape) + site.noise * 0.5 * _smooth_noise(rng, size, 0.05)
    return np.clip(np.round(np.clip(img, 0, 1) * 255), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- marker reader

def _region_mean(img: np.ndarray, x0, x1, y0, y1) -> float:
    h, w = img.shape
    r0, r1 = int(math.floor(y0 * h)), max(int(math.ceil(y1 * h)), int(math.floor(y0 * h)) + 1)
    c0, c1 = int(math.floor(x0 * w)), max(int(math.ceil(x1 * w)), int(math.floor(x0 * w)) + 1)
    return float(img[r0:r1, c0:c1].mean())


def read_markers(image) -> dict:
    """Decode the synthetic demographic markers of a phantom (or a generated image).

    Accepts a 2-D array (uint8 or float in [0, 1]) or an (H, W, C) array. Returns
    {"sex": "F"|"M", "group": one of GROUPS or None, "age": float, "sex_margin",
    "group_margin"}; margins are the intensity contrasts behind each decision.
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    if a.ndim != 2:
        raise UserError(f"read_markers expects a 2-D image, got shape {a.shape}")
    if a.max() > 1.5:
        a = a / 255.0
    cx, cy = SEX_CENTER
    inner = SEX_SHORT * 0.9
    # arms only: the parts of each bar that the other orientation does not cover
    horiz = (_region_mean(a, cx - SEX_LONG * 0.9, cx - SEX_SHORT * 1.6, cy - inner, cy + inner)
             + _region_mean(a, cx + SEX_SHORT * 1.6, cx + SEX_LONG * 0.9, cy - inner, cy + inner)) / 2
    vert = (_region_mean(a, cx - inner, cx + inner, cy - SEX_LONG * 0.9, cy - SEX_SHORT * 1.6)
            + _region_mean(a, cx - inner, cx + inner, cy + SEX_SHORT * 1.6, cy + SEX_LONG * 0.9)) / 2
    sex = "M" if horiz > vert else "F"
    cells = [_region_mean(a, gx - GROUP_HALF * 0.7, gx + GROUP_HALF * 0.7,
                          gy - GROUP_HALF * 0.7, gy + GROUP_HALF * 0.7) for gx, gy in GROUP_CELLS]
    order = np.argsort(cells)[::-1]
    background = float(np.median(cells))
    group_margin = cells[order[0]] - cells[order[1]]
    group = GROUPS[int(order[0])] if cells[order[0]] - background > 0.2 else None
    # age: the bar's extent along its row
    h, w = a.shape
    r0, r1 = int(AGE_Y[0] * h + 0.5), max(int(AGE_Y[1] * h), int(AGE_Y[0] * h + 0.5) + 1)
    profile = a[r0:r1].mean(axis=0)
    lo = float(np.median(profile[int(0.75 * w):]))
    hi = float(np.percentile(profile[: max(2, int(0.1 * w))], 75))
    thr = (lo + hi) / 2
    start = int(AGE_X0 * w)
    on = profile[start:] > thr
    # bar length = count of "on" pixels until the first sustained gap
    n = 0
    gap = 0
    for v in on:
        if v:
            n += 1 + gap
            gap = 0
        else:
            gap += 1
            if gap >= 2:
                break
    age = length_to_age(n / w)
    return {"sex": sex, "group": group, "age": age, "sex_margin": float(horiz - vert),
            "group_margin": float(group_margin)}
