//! The "Guest access" page: `GET /guests` for a browser. The same report as the JSON, laid
//! out as the seeds' admin tab: spaces shared with guests, guests, guest groups, with
//! permissions and expiries. One self-contained document (inline CSS, no scripts, no
//! external assets) so it works on an air-gapped admin port; every value is escaped.

use std::fmt::Write as _;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::http::page::escape as html_escape;

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#172b4d}\
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:2rem 0 .5rem}\
.meta{color:#5e6c84}table{border-collapse:collapse;width:100%;max-width:72rem}\
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #dfe1e6;vertical-align:top}\
th{background:#f4f5f7;font-weight:600}.perm{display:inline-block;background:#e3fcef;\
color:#006644;border-radius:3px;padding:0 .35rem;margin:0 .2rem .1rem 0;font-size:12px}\
.expired{color:#bf2600;font-weight:600}.guest{background:#fff0b3;color:#172b4d;\
border-radius:3px;padding:0 .3rem;font-size:11px;font-weight:700}.none{color:#97a0af}";

fn text(v: &Value) -> String {
    html_escape(v.as_str().unwrap_or("")).into_owned()
}

/// An expiry cell: the instant, marked when it has passed.
fn expiry(v: &Value, now: OffsetDateTime) -> String {
    match v.as_str() {
        None => "<span class=\"none\">never</span>".into(),
        Some(s) => {
            let past = OffsetDateTime::parse(s, &Rfc3339).is_ok_and(|t| t <= now);
            if past {
                format!(
                    "<span class=\"expired\" title=\"no longer counts\">{} (expired)</span>",
                    html_escape(s)
                )
            } else {
                format!("<time datetime=\"{0}\">{0}</time>", html_escape(s))
            }
        }
    }
}

/// " until <expiry>" for something that ends, nothing for something that does not.
fn until(expires: &Value, now: OffsetDateTime) -> String {
    if expires.is_string() {
        format!(" until {}", expiry(expires, now))
    } else {
        String::new()
    }
}

/// One line per `{"space", "permissions", "expires"}` grant of the report.
fn space_grants(grants: &Value, now: OffsetDateTime) -> String {
    let mut out = String::new();
    for g in grants.as_array().into_iter().flatten() {
        let _ = write!(
            out,
            "<div>{} {}{}</div>",
            text(&g["space"]),
            permissions(&g["permissions"]),
            until(&g["expires"], now)
        );
    }
    out
}

fn permissions(v: &Value) -> String {
    let mut out = String::new();
    for p in v.as_array().into_iter().flatten() {
        let _ = write!(out, "<span class=\"perm\">{}</span>", text(p));
    }
    out
}

fn entries(v: &Value) -> impl Iterator<Item = (&String, &Value)> {
    v.as_object().into_iter().flatten()
}

pub fn render(report: &Value, now: OffsetDateTime) -> String {
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Guest access · guestgate</title><style>{STYLE}</style></head><body>\
         <h1>Guest access</h1><p class=\"meta\">Revision <code>{}</code> · generated {}</p>",
        text(&report["revision"]),
        now.replace_nanosecond(0)
            .unwrap_or(now)
            .format(&Rfc3339)
            .unwrap_or_default()
    );

    out.push_str(
        "<h2 id=\"spaces\">Spaces shared with guests</h2><table id=\"spaces-table\"><thead><tr>\
         <th>Space</th><th>Shared with</th><th>Permissions</th><th>Expires</th></tr></thead><tbody>",
    );
    let mut any = false;
    for (key, space) in entries(&report["spaces"]) {
        for (side, label) in [("groups", "group"), ("users", "guest")] {
            for (name, grant) in entries(&space[side]) {
                any = true;
                let _ = write!(
                    out,
                    "<tr><td>{}{}</td><td>{} <span class=\"meta\">({label})</span></td><td>{}</td><td>{}</td></tr>",
                    html_escape(key),
                    space["name"]
                        .as_str()
                        .map(|n| format!(" <span class=\"meta\">{}</span>", html_escape(n)))
                        .unwrap_or_default(),
                    html_escape(name),
                    permissions(&grant["permissions"]),
                    expiry(&grant["expires"], now)
                );
            }
        }
    }
    if !any {
        out.push_str(
            "<tr><td colspan=\"4\" class=\"none\">No space is shared with guests.</td></tr>",
        );
    }
    out.push_str("</tbody></table>");

    out.push_str(
        "<h2 id=\"guests\">Guests</h2><table id=\"guests-table\"><thead><tr><th>Guest</th>\
         <th>Groups</th><th>Spaces (own grants)</th><th>Access ends</th></tr></thead><tbody>",
    );
    let mut any = false;
    for (name, guest) in entries(&report["guests"]) {
        any = true;
        let display = match guest["display_name"].as_str() {
            Some(d) => format!(" <span class=\"meta\">{}</span>", html_escape(d)),
            None => String::new(),
        };
        let email = match guest["email"].as_str() {
            Some(e) => format!("<br><span class=\"meta\">{}</span>", html_escape(e)),
            None => String::new(),
        };
        let mut groups = String::new();
        for m in guest["memberships"].as_array().into_iter().flatten() {
            let _ = write!(
                groups,
                "<div>{}{}</div>",
                text(&m["group"]),
                until(&m["expires"], now)
            );
        }
        let spaces = space_grants(&guest["spaces"], now);
        let _ = write!(
            out,
            "<tr><td>{} <span class=\"guest\">GUEST</span>{display}{email}</td><td>{groups}</td><td>{spaces}</td><td>{}</td></tr>",
            html_escape(name),
            expiry(&guest["expires"], now)
        );
    }
    if !any {
        out.push_str("<tr><td colspan=\"4\" class=\"none\">No guests.</td></tr>");
    }
    out.push_str("</tbody></table>");

    out.push_str(
        "<h2 id=\"groups\">Guest groups</h2><table id=\"groups-table\"><thead><tr><th>Group</th>\
         <th>Members</th><th>Spaces</th></tr></thead><tbody>",
    );
    let mut any = false;
    for (name, group) in entries(&report["guest_groups"]) {
        any = true;
        let members: Vec<String> = group["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        let spaces = space_grants(&group["spaces"], now);
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{spaces}</td></tr>",
            html_escape(name),
            if members.is_empty() {
                "<span class=\"none\">none</span>".to_string()
            } else {
                members.join(", ")
            }
        );
    }
    if !any {
        out.push_str("<tr><td colspan=\"3\" class=\"none\">No guest groups.</td></tr>");
    }
    out.push_str("</tbody></table></body></html>\n");
    out
}
