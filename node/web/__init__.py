"""The caseworkers' web application (`hedui web`): accounts, cases, the household means test in a browser.

A thin Starlette layer (`app`) over plain typed Python: `accounts` (Argon2id, lock-out, roles),
`sessions` (idle timeout, CSRF token per session), `cases` (SQLite in the node's data dir),
`desk` (what a case does, through the node's own client API), `csrf`, `csp`, `i18n`.
"""
