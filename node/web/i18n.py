"""The pages' words, Chinese first, English selectable: `text(lang, key)`; province statuses in plain words."""

from __future__ import annotations

from typing import Final

LANGS: Final[tuple[str, ...]] = ("zh", "en")
COOKIE: Final[str] = "hedui_lang"

STRINGS: Final[dict[str, tuple[str, str]]] = {
    "app": ("跨省家庭经济状况核对", "Cross-province household verification"),
    "login": ("登录", "Sign in"), "logout": ("退出", "Sign out"), "name": ("账号", "Account name"),
    "password": ("密码", "Password"), "login_refused": ("账号或密码错误，或账号因多次失败已被暂时锁定。",
                                                       "Wrong name or password, or the account is locked after repeated failures."),
    "expired": ("会话已过期，请重新登录。", "Your session expired; please sign in again."),
    "cases": ("案件", "Cases"), "new_case": ("新建案件", "New case"), "access_log": ("访问日志", "Access log"),
    "federation": ("联盟状态", "Federation"), "case": ("案件", "Case"), "status": ("状态", "Status"),
    "days": ("申请天数", "Days since application"), "region": ("地区代码", "Region code"),
    "purpose": ("核对事项", "Purpose"), "applicant": ("申请人", "Applicant"), "notes": ("备注", "Notes"),
    "members": ("家庭成员", "Household members"), "id_number": ("身份证号码", "ID number"),
    "declared_wage": ("申报月工资（元）", "Declared monthly wage (yuan)"),
    "declared_deposit": ("申报存款（元）", "Declared deposits (yuan)"),
    "evidence": ("签字授权书扫描件（PDF 或图片）", "Scanned signed authorization (PDF or image)"),
    "consent_days": ("授权有效天数", "Consent valid for (days)"), "create": ("登记案件并登记授权", "Register case and consent"),
    "run": ("执行核对", "Run the check"), "rerun": ("重新核对", "Run again"), "revoke": ("撤销授权", "Revoke consent"),
    "close": ("结案", "Close case"), "report": ("打印报告", "Printable report"), "record": ("下载决定记录", "Download decision record"),
    "consent": ("授权", "Consent"), "expires": ("到期", "Expires"), "evidence_sha": ("授权书 SHA-256", "Authorization SHA-256"),
    "verdict": ("结论", "Verdict"), "allowance": ("月保障金额", "Monthly allowance"),
    "income_pp": ("人均月收入", "Income per person a month"), "standard_pp": ("保障标准（人/月）", "Standard per person a month"),
    "rules": ("各项规则", "Rules"), "met": ("符合", "met"), "not_met": ("不符合", "not met"),
    "as_of": ("数据截至", "Data as of"), "provinces": ("各省情况", "Provinces"), "province": ("省份", "Province"),
    "no_result": ("尚未核对。", "Not checked yet."), "person_checks": ("与申报数据比对（只显示是否一致，不显示数值）",
                                                                     "Against the declared figures (consistency only, never a value)"),
    "member": ("成员", "Member"), "check": ("比对项", "Check"), "outcome": ("结果", "Outcome"),
    "verify_offline": ("离线验证", "Verify offline"), "digest": ("决定记录摘要（SHA-256）", "Decision record digest (SHA-256)"),
    "when": ("时间", "When"), "who": ("账号标识", "Account"), "action": ("操作", "Action"), "export": ("导出", "Export"),
    "error": ("出错了", "Something went wrong"), "back": ("返回", "Back"), "missing": ("未能参与的省份", "Provinces that could not take part"),
    "ELIGIBLE": ("符合条件", "Eligible"), "NOT_ELIGIBLE": ("不符合条件", "Not eligible"),
    "INCOMPLETE": ("不完整（有省份未能参与）", "Incomplete (a province could not take part)"),
    "open": ("已登记", "Registered"), "checked": ("已核对", "Checked"), "revoked": ("授权已撤销", "Consent revoked"),
    "closed": ("已结案", "Closed"), "endpoint": ("地址", "Endpoint"), "health": ("健康状态", "Health"),
    "store": ("本地数据", "Local store"), "refusals": ("本节点近期拒绝", "This node's recent refusals"),
    "print": ("打印", "Print"), "office": ("办公室", "Office"), "created_by": ("经办账号", "Created by"),
    "period": ("核对月份", "Month decided"), "lang_other": ("English", "中文"),
    "id_error": ("身份证号码有误", "ID number is wrong"), "fix_below": ("请更正以下内容：", "Please correct the following:"),
    "SATISFIED": ("与申报一致（不高于申报）", "Consistent (not above the declared figure)"),
    "NOT_SATISFIED": ("不一致：高于申报", "Discrepancy: above the declared figure"),
    "NO_RECORD": ("无记录", "No record"), "DENIED": ("被拒绝", "Refused"),
    "batches": ("批量核对", "Batches"), "batch": ("批次", "Batch"),
    "batch_households": ("家庭清单 CSV（household,id_number[,region]，每位成员一行）",
                         "Households CSV (household,id_number[,region], one row per member)"),
    "batch_consents": ("授权清单 CSV（hedui consent grant-batch 的输出）", "Consents CSV (from hedui consent grant-batch)"),
    "batch_region": ("未写地区的家庭所属地区代码（可选）", "Region of households whose rows name none (optional)"),
    "batch_start": ("上传并开始核对", "Upload and start"), "progress": ("进度", "Progress"),
    "decided": ("已核对家庭", "Households decided"), "incomplete": ("不完整（可重新上传以补全）", "Incomplete"),
    "rejected": ("被拒绝的行", "Rejected rows"), "results": ("下载结果（JSONL）", "Download results (JSONL)"),
    "rejects": ("下载被拒绝的行（CSV）", "Download rejected rows (CSV)"), "started": ("开始时间", "Started"),
    "running": ("进行中", "Running"), "done": ("已完成", "Done"), "failed": ("失败", "Failed"),
    "household_test": ("家庭经济状况核对（多省安全求和）", "Household means test (secure sum over provinces)"),
}

#: Route status -> (zh, en, kind): kind "ok", "none" (no record there) or "failed" (could not ask).
STATUSES: Final[dict[str, tuple[str, str, str]]] = {
    "OK": ("已答复", "answered", "ok"),
    "NO_MATCH": ("无记录：该省不持有该户数据", "no record: holds no data on this household", "none"),
    "NOT_HELD": ("无记录：该省不持有所查成员数据", "no record: holds none of these members", "none"),
    "UNAVAILABLE": ("无法查询：该省节点不可用", "could not ask: the province's node is unavailable", "failed"),
    "DEADLINE_EXCEEDED": ("无法查询：超时未答复", "could not ask: no answer in time", "failed"),
    "DENIED": ("无法查询：该省拒绝了查询", "could not ask: the province refused", "failed"),
    "IMPLAUSIBLE": ("未查询：该省持有数据的声明不可信", "not asked: its claim to hold data is implausible", "failed"),
    "INVALID": ("答复无效（签名或内容不符）", "invalid answer (signature or content)", "failed"),
}


def pick(raw: str | None) -> str:
    return raw if raw in LANGS else LANGS[0]


def text(lang: str, key: str) -> str:
    """The word for `key` in `lang` (the key itself when unknown)."""
    pair = STRINGS.get(key)
    return key if pair is None else pair[LANGS.index(pick(lang))]


def status(lang: str, name: str) -> tuple[str, str]:
    """(words, kind) for a province's route status."""
    zh, en, kind = STATUSES.get(name, (name, name, "failed"))
    return (zh if pick(lang) == "zh" else en), kind
