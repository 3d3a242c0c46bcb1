"""The status page as HTML: plain, server-rendered, no script, refreshing itself.

Rendered by Jinja2 with autoescaping on for everything: tenants write hosts, names and (through
their objects) reasons and messages, and a tenant may be hostile, so nothing reaches the page
unescaped unless a template says so, and none does."""

from __future__ import annotations

from jinja2 import Environment, StrictUndefined

from .model import Overview

#: seconds between the page's own reloads
REFRESH = 10
#: refusals shown (newest first); the CLI has them all
MAX_REFUSALS = 50

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{{ refresh }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kubelbd status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #ddd;
         vertical-align: top; overflow-wrap: anywhere; }
th { background: #f4f4f4; }
.ok { color: #176b2c; } .bad { color: #a31515; } .wait { color: #8a6100; }
.muted { color: #666; } code { font-size: .95em; }
</style>
</head>
<body>
<h1>kubelbd status</h1>
<p class="muted">Generated {{ ov.generated.strftime("%Y-%m-%d %H:%M:%S UTC") }};
refreshes every {{ refresh }} s.
{%- if ov.envoy is not none %} Envoy admin:
{% if ov.envoy.reachable %}<span class="ok">reachable</span>
{%- else %}<span class="bad">unreachable</span>{% endif %}.{% endif %}</p>

<h2 id="tenants">Tenants ({{ ov.tenants | length }})</h2>
<table>
<tr><th>Tenant</th><th>Health</th><th>Routes</th><th>Load balancers</th><th>Nodes</th>
<th>Problems</th></tr>
{%- for t in ov.tenants %}
<tr class="tenant" data-tenant="{{ t.name }}">
<td>{{ t.name }}</td>
<td>{% if t.healthy %}<span class="ok">healthy</span>
{%- elif not t.checks %}<span class="wait">no health reported</span>
{%- else %}<span class="bad">unhealthy</span>{% endif %}</td>
<td>{{ t.routes }}</td><td>{{ t.load_balancers }}</td>
<td>{{ t.node_addresses | join(", ") }}</td>
<td>{% for c in t.checks if c.ok is false %}{{ c.type }}: {{ c.reason }} {{ c.message }}<br>
{%- endfor %}{{ t.last_error }}</td>
</tr>
{%- endfor %}
</table>

<h2 id="routes">Routes ({{ ov.routes | length }})</h2>
<table>
<tr><th>Tenant</th><th>Route</th><th>From</th><th>Hosts</th><th>Status</th>
<th>Certificate</th></tr>
{%- for r in ov.routes %}
<tr class="route" data-route="{{ r.id }}">
<td>{{ r.tenant }}</td><td>{{ r.name }}</td><td>{{ r.source }}</td>
<td>{% for h in r.hosts %}<span class="{{ 'ok' if h in r.served else 'bad' }}">{{ h }}</span>
{%- if not loop.last %}, {% endif %}{% endfor %}</td>
<td class="{{ state_class[r.state] }}">{{ r.state }}</td>
<td>{% for c in r.certificates %}<code>{{ c.secret }}</code> ({{ c.source }}):
{% if c.problem %}<span class="bad">{{ c.problem }}</span>
{%- elif c.days_left is not none and c.days_left < 0 %}<span class="bad">expired
{{ c.expires.strftime("%Y-%m-%d") }}</span>
{%- else %}expires {{ c.expires.strftime("%Y-%m-%d %H:%M") }} ({{ c.days_left }} days)
{%- endif %}<br>{% endfor %}</td>
</tr>
{%- endfor %}
</table>

{%- if ov.load_balancers %}
<h2 id="load-balancers">Load balancers ({{ ov.load_balancers | length }})</h2>
<table>
<tr><th>Tenant</th><th>Record</th><th>From</th><th>Address</th><th>Ports</th><th>Status</th></tr>
{%- for b in ov.load_balancers %}
<tr class="load-balancer"><td>{{ b.tenant }}</td><td>{{ b.name }}</td><td>{{ b.source }}</td>
<td>{{ b.address }}</td><td>{{ b.ports }}</td>
<td class="{{ state_class[b.state] }}">{{ b.state }}</td></tr>
{%- endfor %}
</table>
{%- endif %}

<h2 id="refusals">Recent refusals ({{ refusals | length }}
{%- if ov.refusals | length > refusals | length %} of {{ ov.refusals | length }}{% endif %})</h2>
<table>
<tr><th>Since</th><th>Tenant</th><th>Record</th><th>Condition</th><th>Reason</th>
<th>Message</th></tr>
{%- for f in refusals %}
<tr class="refusal"><td>{{ f.since }}</td><td>{{ f.tenant }}</td><td>{{ f.kind }} {{ f.name }}</td>
<td>{{ f.type }}</td><td>{{ f.reason }}</td><td>{{ f.message }}</td></tr>
{%- else %}
<tr><td colspan="6" class="muted">none</td></tr>
{%- endfor %}
</table>
</body>
</html>
"""

STATE_CLASS = {
    "Serving": "ok",
    "Degraded": "wait",
    "Pending": "wait",
    "NotServed": "bad",
    "Invalid": "bad",
}

_ENV = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)
_PAGE = _ENV.from_string(TEMPLATE)


def render_page(ov: Overview) -> str:
    return _PAGE.render(
        ov=ov, refusals=ov.refusals[:MAX_REFUSALS], refresh=REFRESH, state_class=STATE_CLASS
    )
