"""The onboarding web pages: a small consent form and the callback redirect.

The real service shows the digi.me web client here; the sandbox shows what is
being shared and two buttons, then sends the browser back to the
``redirect_uri`` with the parameters of protocol.md#consent.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

PAGE_TITLES = {
    "authorize": "Share your data",
    "onboard": "Add a service",
    "user-reauth": "Renew your consent",
    "reauthorize": "Reconnect an account",
    "direct-onboarding": "Share your data as a guest",
    "consent-access": "digi.me app: share your data",
    "revoke": "Withdraw permission",
}


def callback_url(redirect_uri: str, params: Mapping[str, str | None]) -> str:
    """``redirect_uri`` with the callback parameters added to its query."""
    parts = urlsplit(redirect_uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def consent_page(
    *,
    page: str,
    code: str,
    action: str,
    application_id: str,
    contract_id: str,
    contract_kind: str,
    accounts: Iterable[Mapping[str, object]],
    account_ref: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> str:
    """The HTML consent form: contract, accounts, Share and Cancel.

    ``fields`` replaces the hidden ``code``/``page`` fields (the v1.5 pages post
    their session and callback instead).
    """
    e = html.escape
    rows = "\n".join(
        f"<li><b>{e(str(a.get('serviceTypeName', a.get('serviceGroupName', 'Account'))))}</b>"
        f" &mdash; {e(str(a.get('username', a.get('id', ''))))}"
        f" <small>({e(str(a.get('id', '')))})</small></li>"
        for a in accounts
    )
    fields = fields if fields is not None else {"code": code, "page": page}
    hidden = "".join(
        f'<input type="hidden" name="{e(name)}" value="{e(value)}">'
        for name, value in fields.items()
    )
    if account_ref:
        hidden += f'<input type="hidden" name="accountRef" value="{e(account_ref)}">'
    kind = "ongoing access (refreshable)" if contract_kind == "ongoing" else "one-off access"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(PAGE_TITLES.get(page, page))}
 - digi.me sandbox</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:3em auto;}}
button{{font-size:1.1em;margin-right:1em;padding:.4em 1.4em}}</style></head>
<body>
<h1>{e(PAGE_TITLES.get(page, page))}</h1>
<p>This is the <b>privateshare sandbox</b>, not digi.me. No real data is shared.</p>
<p>Application <code>{e(application_id)}</code> asks for {e(kind)} under contract
<code>{e(contract_id)}</code> to these accounts:</p>
<ul>
{rows}
</ul>
<form method="post" action="{e(action)}">{hidden}
<button type="submit" name="decision" value="share" id="share">Share</button>
<button type="submit" name="decision" value="cancel" id="cancel">Cancel</button>
</form>
</body></html>
"""


def revoke_page(*, code: str, action: str, account: Mapping[str, object]) -> str:
    """The form that withdraws one account's permission (Withdraw) or keeps it (Cancel)."""
    e = html.escape
    name = account.get("serviceTypeName", "this account")
    user = account.get("username", "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(PAGE_TITLES["revoke"])}
 - digi.me sandbox</title></head>
<body>
<h1>{e(PAGE_TITLES["revoke"])}</h1>
<p>This is the <b>privateshare sandbox</b>, not digi.me.</p>
<p>Withdraw the permission to read <b>{e(str(name))}</b> {e(str(user))}
<small>({e(str(account.get("id", "")))})</small>? Its data stays in your library; it is
not updated again until you reconnect the account.</p>
<form method="post" action="{e(action)}">
<input type="hidden" name="code" value="{e(code)}"><input type="hidden" name="page" value="revoke">
<button type="submit" name="decision" value="share" id="share">Withdraw</button>
<button type="submit" name="decision" value="cancel" id="cancel">Cancel</button>
</form>
</body></html>
"""


def message_page(title: str, message: str) -> str:
    """A plain page for a bad or used code."""
    e = html.escape
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"</head><body><h1>{e(title)}</h1><p>{e(message)}</p></body></html>\n"
    )
