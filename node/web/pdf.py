"""The case report as an A4 PDF built server-side (fpdf2), with an embedded CJK font when the machine has one."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from fpdf import FPDF

from node.domain.regions import PROVINCES
from node.web import i18n
from node.web.cases import Case

#: CJK fonts looked for, in order (Debian's fonts-wqy-microhei first, which scripts/test installs).
CJK_FONTS: Final[tuple[Path, ...]] = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/arphic/uming.ttc"),
)
FAMILY: Final[str] = "cjk"


def cjk_font() -> Path | None:
    """The first CJK font found on this machine, or None (the report then falls back to English in a core font)."""
    return next((p for p in CJK_FONTS if p.is_file()), None)


def _yuan(fen: int | None) -> str:
    if fen is None:
        return "-"
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


class _Report(FPDF):
    """A4 portrait, 15 mm margins, page numbers in the footer."""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("courier", size=8)
        self.cell(0, 5, f"{self.page_no()}", align="C")


def report_pdf(case: Case, province: str, lang: str, *, compress: bool = True) -> bytes:
    """The report's PDF bytes: the same content as the printable page (verdict, allowance, income per person
    against the standard, rules, provinces' statuses, as-of range, the decision record's digest and how to verify it)."""
    assert case.result is not None
    font = cjk_font()
    lang = i18n.pick(lang) if font is not None else "en"  # without a CJK font, English labels only
    t: Callable[[str], str] = functools.partial(i18n.text, lang)
    pdf = _Report(orientation="P", unit="mm", format="A4")
    pdf.set_compression(compress)
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(True, margin=15)
    if font is not None:
        pdf.add_font(FAMILY, "", str(font), collection_font_number=0)
        pdf.set_font(FAMILY, size=10)
    else:
        pdf.set_font("helvetica", size=10)
    plain = (lambda s: s) if font is not None else (lambda s: s.encode("latin-1", "replace").decode("latin-1"))
    pdf.set_title(f"{t('report')} {case.id}")
    pdf.set_subject(f"decision record sha256 {case.result['record_sha256']}")
    pdf.set_creator("hedui")
    pdf.add_page()
    width = pdf.epw

    def heading(text: str, size: int = 12) -> None:
        pdf.ln(2)
        pdf.set_font(size=size)
        pdf.multi_cell(width, size * 0.55, plain(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(size=10)
        pdf.ln(1)

    def row(label: str, value: Any) -> None:
        """A label and its value side by side; the next row starts below the taller of the two."""
        cells = ((width * 0.35, plain(label)), (width * 0.65, plain(str(value))))
        height = 6 * max(len(pdf.multi_cell(w, 6, text, dry_run=True, output="LINES")) for w, text in cells)
        if pdf.get_y() + height > pdf.page_break_trigger:
            pdf.add_page()
        top = pdf.get_y()
        for w, text in cells:
            pdf.multi_cell(w, 6, text, new_x="RIGHT", new_y="TOP")
        pdf.set_xy(pdf.l_margin, top + height)

    h = case.result["household"]
    heading(f"{t('app')} - {t('report')}", 15)
    for label, value in ((t("case"), case.id), (t("applicant"), case.applicant), (t("region"), case.region),
                         (t("purpose"), case.purpose), (t("consent"), case.consent_id),
                         (t("evidence_sha"), case.evidence_sha256)):
        row(label, value)
    heading(t("household_test"))
    yuan = "元" if font is not None else "yuan"
    for label, value in ((t("verdict"), t(h["verdict"])), (t("allowance"), f"{_yuan(h['allowance'])} {yuan}"),
                         (t("income_pp"), f"{_yuan(h['income_per_person'])} {yuan}"),
                         (t("standard_pp"), f"{_yuan(h['standard_per_person'])} {yuan}"),
                         (t("members"), h["members"]),
                         (t("as_of"), f"{h['as_of']['from'] or '-'} ... {h['as_of']['to'] or '-'}"),
                         (t("period"), h["period"])):
        row(label, value)
    heading(t("rules"))
    for rule, ok in sorted(h["rules"].items()):
        row(rule, t("met") if ok else t("not_met"))
    heading(t("provinces"))
    for p, status in sorted(h["routing"].items()):
        names = PROVINCES.get(p, (p, p))
        row(f"{p} {names[0] if lang == 'zh' else names[1]}", f"{i18n.status(lang, status)[0]} ({status})")
    if h.get("missing"):
        row(t("missing"), ", ".join(h["missing"]))
    persons = case.result.get("persons") or []
    if persons:
        heading(t("person_checks"))
        for person in persons:
            if person.get("error"):
                row(person["masked"], person["error"])
            for r in person["rows"]:
                item = t("declared_wage") if r["item"] == "wage" else t("declared_deposit")
                row(f"{person['masked']} {r['province']}", f"{item} <= {_yuan(r['declared'])}: {t(r['outcome'])}")
    heading(t("verify_offline"))
    pdf.multi_cell(width, 6, plain(t("digest")), new_x="LMARGIN", new_y="NEXT")
    ascii_lines = ((case.result["record_sha256"], ""),
                   (f"sha256sum decision-{case.id}.json",
                    "must print the digest above" if lang == "en" else "应输出上面的摘要"),
                   (f"hedui household verify --ca ca.pem decision-{case.id}.json",
                    "exit 0: totals are the sum of the holders' signed shares" if lang == "en"
                    else "退出码 0：合计等于各持有方签名份额之和"))
    for code, comment in ascii_lines:  # a core monospace font: the digest and commands stay plain text in the PDF
        pdf.set_font("courier", size=9)
        pdf.multi_cell(width, 5, code, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(FAMILY if font is not None else "helvetica", size=8)
        if comment:
            pdf.multi_cell(width, 4.5, plain("# " + comment), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
