"""Report sections and impressions from MIMIC-style free text and OpenI/IU XML.

Free-text reports (MIMIC-CXR) are split on upper-case headers followed by a
colon ("IMPRESSION:", "FINDINGS:"). A header at the start of a line may be any
upper-case phrase; inside a line only a known section name counts, so that
"PA AND LATERAL:" in prose is not taken for a section while a report flattened
to one line still splits. Synonyms are folded onto one name (CONCLUSION ->
impression, HISTORY -> indication). The impression falls back to the findings,
then to the last paragraph.

OpenI/IU reports are XML (`<AbstractText Label="IMPRESSION">`); their section
labels go through the same synonym table.

Text is returned whitespace-normalized and otherwise untouched: how
de-identification placeholders ("___" in MIMIC, "XXXX" in OpenI) are handled is
a prompt-building setting (see `clean_impression`).
"""
from __future__ import annotations

import io
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from rv2.errors import MissingInputError, UserError

# Upper-case header name -> canonical section. Unknown headers keep their own
# lower-cased name.
SECTION_SYNONYMS: dict[str, str] = {
    "impression": "impression", "impressions": "impression", "conclusion": "impression",
    "conclusions": "impression", "summary": "impression", "opinion": "impression",
    "interpretation": "impression", "diagnosis": "impression",
    "impression and recommendation": "impression", "impression and recommendations": "impression",
    # Combined sections hold the conclusion: treat them as the impression.
    "findings and impression": "impression", "findings/impression": "impression",
    "impression/findings": "impression", "findings and conclusion": "impression",
    "findings": "findings", "finding": "findings", "report": "findings", "result": "findings",
    "results": "findings",
    "indication": "indication", "indications": "indication", "history": "indication",
    "clinical history": "indication", "clinical information": "indication",
    "clinical indication": "indication", "reason for exam": "indication",
    "reason for examination": "indication", "reason for study": "indication",
    "comparison": "comparison", "comparisons": "comparison", "comparison exam": "comparison",
    "technique": "technique", "procedure": "technique", "exam": "examination",
    "examination": "examination", "study": "examination", "type of exam": "examination",
    "notification": "notification", "recommendation": "recommendation",
    "recommendations": "recommendation", "addendum": "addendum", "wet read": "wet read",
}

_HEADER_WORDS = r"[A-Z][A-Z&()/,\-]*(?: +[A-Z&()/,\-]+)*"
# A header at the start of a line: any upper-case phrase of 2+ letters then ':'.
_LINE_HEADER = re.compile(rf"^[ \t]*(?P<name>{_HEADER_WORDS}) *:", re.MULTILINE)
_INLINE_NAMES = sorted({k.upper() for k in SECTION_SYNONYMS}, key=len, reverse=True)
# A header inside a line: only a known section name, preceded by start or space.
_INLINE_HEADER = re.compile(r"(?:(?<=\s)|^)(?P<name>" + "|".join(re.escape(n) for n in _INLINE_NAMES)
                            + r") *:(?=\s|$)")
_PLACEHOLDER = re.compile(r"_{2,}|\bX{3,}[A-Za-z]*")  # MIMIC "___", OpenI "XXXX" (also "XXXXPM")
_WS = re.compile(r"\s+")


def normalize_whitespace(text: str) -> str:
    return _WS.sub(" ", text).strip()


def canonical_section(name: str) -> str:
    key = normalize_whitespace(name).lower().strip(" :")
    return SECTION_SYNONYMS.get(key, key)


def is_openi_xml(text: str) -> bool:
    head = text.lstrip()[:200]
    return head.startswith("<") and ("<eCitation" in text[:2000] or "AbstractText" in text)


def _openi_sections(xml_text: str) -> dict[str, str]:
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise UserError(f"not a well-formed OpenI/IU report XML: {exc}") from exc
    out: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = node.get("Label")
        if not label:
            continue
        text = normalize_whitespace("".join(node.itertext()))
        key = canonical_section(label)
        if text:
            out[key] = f"{out[key]} {text}" if out.get(key) else text
        else:
            out.setdefault(key, "")
    return out


def _header_spans(text: str) -> list[tuple[int, int, str]]:
    spans = []
    for m in _LINE_HEADER.finditer(text):
        name, start = m.group("name"), m.start("name")
        if sum(c.isalpha() for c in name) < 2:
            continue
        if name.lower() not in SECTION_SYNONYMS:
            # "FINAL REPORT EXAMINATION:" (a flattened report): the header is
            # the known section name at the end; the rest stays in the text.
            words = name.split(" ")
            for k in range(1, len(words)):
                tail = " ".join(words[k:])
                if tail.lower() in SECTION_SYNONYMS:
                    start, name = start + len(" ".join(words[:k])) + 1, tail
                    break
        spans.append((start, m.end(), name))
    for m in _INLINE_HEADER.finditer(text):
        if not any(s <= m.start() < e for s, e, _ in spans):
            spans.append((m.start(), m.end(), m.group("name")))
    return sorted(spans)


def extract_sections(text: str) -> dict[str, str]:
    """Sections of a report as {canonical name: whitespace-normalized text}.

    Accepts MIMIC-style free text or an OpenI/IU XML document. Text before the
    first header is returned as "preamble" (when not empty). A section that
    occurs twice is joined with a space, in order.
    """
    if text is None:
        return {}
    if not isinstance(text, str):
        raise TypeError(f"report must be a string, got {type(text).__name__}")
    if is_openi_xml(text):
        return _openi_sections(text)
    spans = _header_spans(text)
    out: dict[str, str] = {}
    pre = normalize_whitespace(text[:spans[0][0]] if spans else text)
    if pre:
        out["preamble"] = pre
    for i, (_, end, name) in enumerate(spans):
        stop = spans[i + 1][0] if i + 1 < len(spans) else len(text)
        body = normalize_whitespace(text[end:stop])
        key = canonical_section(name)
        if body:
            out[key] = f"{out[key]} {body}" if out.get(key) else body
        else:
            out.setdefault(key, "")
    return out


def last_paragraph(text: str) -> str | None:
    """The last non-empty blank-line-separated paragraph, its leading header removed."""
    if is_openi_xml(text):
        secs = [v for v in _openi_sections(text).values() if v]
        return secs[-1] if secs else None
    for para in reversed(re.split(r"\n[ \t]*\n", text)):
        body = normalize_whitespace(_LINE_HEADER.sub("", para, count=1) if _LINE_HEADER.match(para)
                                    else para)
        if body:
            return body
    return None


def extract_impression(report_text: str | None, *, fallback: bool = True) -> str | None:
    """The impression of a report (free text or OpenI XML), whitespace-normalized.

    Order: the impression section (or a synonym such as CONCLUSION); with
    `fallback`, then the findings, then the last paragraph. None when nothing
    non-empty is found. An impression that embeds a whole second report (seen
    in OpenI) is cut to the text after its last inner "IMPRESSION:".
    """
    if report_text is None or (isinstance(report_text, float) and report_text != report_text):
        return None
    if not isinstance(report_text, str):
        raise TypeError(f"report must be a string, got {type(report_text).__name__}")
    if not report_text.strip():
        return None
    sections = extract_sections(report_text)
    imp = sections.get("impression")
    if imp:
        inner = list(re.finditer(r"\bIMPRESSION *:", imp))
        if inner and imp[inner[-1].end():].strip():
            imp = imp[inner[-1].end():].strip()
        return imp
    if not fallback:
        return None
    if sections.get("findings"):
        return sections["findings"]
    return last_paragraph(report_text)


def has_placeholder(text: str) -> bool:
    return bool(_PLACEHOLDER.search(text))


def iter_openi_reports(tgz_path: str | Path) -> Iterator[dict]:
    """Yield {"report_id", "images", "sections", "impression"} per XML file of an
    OpenI/IU report archive (torchxrayvision ships `NLMCXR_reports.tgz`)."""
    tgz_path = Path(tgz_path)
    if not tgz_path.is_file():
        raise MissingInputError(f"OpenI report archive not found: {tgz_path}")
    with tarfile.open(tgz_path, "r:gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            raw = tar.extractfile(member).read().decode("utf-8")
            root = ET.parse(io.StringIO(raw)).getroot()
            images = [n.get("id") for n in root.iter("parentImage") if n.get("id")]
            sections = _openi_sections(raw)
            yield {"report_id": Path(member.name).stem, "images": images, "sections": sections,
                   "impression": extract_impression(raw, fallback=False)}


def openi_reports_archive() -> Path:
    """Path of `NLMCXR_reports.tgz` inside the installed torchxrayvision (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError("torchxrayvision is not installed; it ships NLMCXR_reports.tgz")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "NLMCXR_reports.tgz"
    if not path.is_file():
        raise MissingInputError(f"torchxrayvision is installed but {path} is missing")
    return path
