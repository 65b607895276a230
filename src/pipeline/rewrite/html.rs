//! Streaming HTML rewriting (lol_html): a GUEST label after each user link whose user is a
//! guest, and the banner right after `<body>` on pages of spaces shared with guests. The
//! body is rewritten chunk by chunk as it arrives, so memory stays flat whatever its size.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use lol_html::html_content::ContentType;
use lol_html::send::{ElementContentHandlers, HtmlRewriter, Settings};
use lol_html::{AsciiCompatibleEncoding, Selector};

use crate::http::body::BoxError;
use crate::http::page::escape as html_escape;
use crate::pipeline::forward::WikiBody;
use crate::routes::extract::UserNameSource;

pub const LABEL_HTML: &str = "<span class=\"guestgate-guest-label\">GUEST</span>";

/// Injected once, first thing in `<body>`, so labels and the banner read as such without changing
/// their documented markup (docs/REWRITING.md).
pub const STYLE_HTML: &str = "<style id=\"guestgate-style\">\
.guestgate-guest-label{display:inline-block;margin-left:4px;padding:0 4px;border-radius:3px;\
background:#dfe1e6;color:#42526e;font:700 11px/16px sans-serif;vertical-align:middle;text-transform:uppercase}\
.guestgate-guest-banner{padding:8px 16px;background:#fffae6;color:#172b4d;border-bottom:1px solid #ffe380;\
font:14px/20px sans-serif;text-align:center}</style>";

pub fn banner_html(text: &str) -> String {
    format!(
        "<div class=\"guestgate-guest-banner\" role=\"note\">{}</div>",
        html_escape(text)
    )
}

/// Finds the username a user link points at: `data-username`, the profile / personal
/// space URL in `href`, or else the profile's own sources.
fn username_of(el: &lol_html::send::Element<'_, '_>, sources: &[UserNameSource]) -> Option<String> {
    if let Some(name) = el.get_attribute("data-username").filter(|n| !n.is_empty()) {
        return Some(name);
    }
    confluence_username(el).or_else(|| {
        sources
            .iter()
            .find_map(|s| s.name_in(&el.get_attribute(&s.attribute)?))
    })
}

fn confluence_username(el: &lol_html::send::Element<'_, '_>) -> Option<String> {
    let href = el.get_attribute("href")?;
    let from_query = href
        .split_once("username=")
        .map(|(_, rest)| rest.split(['&', '#']).next().unwrap_or(""));
    let from_path = href
        .split_once("/display/~")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
    let raw = from_query.or(from_path).filter(|s| !s.is_empty())?;
    let decoded: String = form_urlencoded::parse(format!("u={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    Some(decoded)
}

/// Whether a username belongs to a guest.
pub type GuestTest = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What one HTML response gets.
pub struct HtmlPlan {
    /// The user-link selector and the guest test, when tagging.
    pub tag_users: Option<(Selector, GuestTest)>,
    /// The profile's `user_link_name` sources.
    pub user_names: Arc<[UserNameSource]>,
    /// The banner markup, when the page's space is shared with guests.
    pub banner: Option<String>,
    pub encoding: &'static encoding_rs::Encoding,
}

type Sink = Box<dyn FnMut(&[u8]) + Send>;

/// An output sink writing into a buffer the caller drains between writes.
fn buffer_sink(capacity: usize) -> (Sink, Arc<Mutex<Vec<u8>>>) {
    let output = Arc::new(Mutex::new(Vec::with_capacity(capacity)));
    let sink_output = output.clone();
    let sink: Sink = Box::new(move |chunk: &[u8]| {
        if let Ok(mut out) = sink_output.lock() {
            out.extend_from_slice(chunk);
        }
    });
    (sink, output)
}

/// A response body rewritten as it streams through.
pub struct HtmlRewriteBody {
    inner: WikiBody,
    rewriter: Option<HtmlRewriter<'static, Sink>>,
    output: Arc<Mutex<Vec<u8>>>,
    done: bool,
}

impl HtmlRewriteBody {
    pub fn new(inner: WikiBody, plan: HtmlPlan) -> HtmlRewriteBody {
        let (sink, output) = buffer_sink(16 * 1024);
        HtmlRewriteBody {
            inner,
            rewriter: Some(HtmlRewriter::new(settings_for(plan), sink)),
            output,
            done: false,
        }
    }

    fn take_output(&self) -> Option<Bytes> {
        let mut out = self.output.lock().ok()?;
        if out.is_empty() {
            None
        } else {
            Some(Bytes::from(std::mem::take(&mut *out)))
        }
    }
}

/// Rewrites a whole buffer, fed in 16 KiB chunks as a network body would be (for tools,
/// tests and benchmarks; the proxy streams through [`HtmlRewriteBody`]).
pub fn rewrite_buffer(
    plan: HtmlPlan,
    input: &[u8],
) -> Result<Vec<u8>, lol_html::errors::RewritingError> {
    let (sink, output) = buffer_sink(input.len() + 1024);
    let mut rewriter = HtmlRewriter::new(settings_for(plan), sink);
    for chunk in input.chunks(16 * 1024) {
        rewriter.write(chunk)?;
    }
    rewriter.end()?;
    let out = output
        .lock()
        .map(|mut o| std::mem::take(&mut *o))
        .unwrap_or_default();
    Ok(out)
}

/// The lol_html handlers for one plan: the style and then the banner first thing in
/// `<body>`, labels after user links.
fn settings_for(plan: HtmlPlan) -> Settings<'static, 'static> {
    let encoding = AsciiCompatibleEncoding::new(plan.encoding)
        .or_else(|| AsciiCompatibleEncoding::new(encoding_rs::UTF_8))
        .unwrap_or_else(|| unreachable!("UTF-8 is ASCII-compatible"));
    let mut settings = Settings::new_send().with_encoding(encoding);
    // One handler on <body> places the style and the banner: every selector costs lol_html
    // matching work on every start tag, so a <head> handler for the style alone is not worth it.
    let banner = plan.banner;
    let mut placed = false;
    settings = settings.append_element_content_handler((
        std::borrow::Cow::Owned(body_selector()),
        ElementContentHandlers::default().element(
            move |el: &mut lol_html::send::Element<'_, '_>| {
                if !placed {
                    placed = true;
                    // prepend() inserts at the very start: the last call comes first, so the
                    // banner ends up right after <body ...> (docs/REWRITING.md), the style after it.
                    el.prepend(STYLE_HTML, ContentType::Html);
                    if let Some(banner) = &banner {
                        el.prepend(banner, ContentType::Html);
                    }
                }
                Ok(())
            },
        ),
    ));
    if let Some((selector, is_guest)) = plan.tag_users {
        let sources = plan.user_names;
        settings = settings.append_element_content_handler((
            std::borrow::Cow::Owned(selector),
            ElementContentHandlers::default().element(
                move |el: &mut lol_html::send::Element<'_, '_>| {
                    if let Some(name) = username_of(el, &sources)
                        && is_guest(&name)
                    {
                        el.after(LABEL_HTML, ContentType::Html);
                    }
                    Ok(())
                },
            ),
        ));
    }
    settings
}

fn body_selector() -> Selector {
    "body"
        .parse()
        .unwrap_or_else(|_| unreachable!("constant selector"))
}

impl Body for HtmlRewriteBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(chunk) = self.take_output() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && let Some(rewriter) = self.rewriter.as_mut()
                        && let Err(e) = rewriter.write(&data)
                    {
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                }
                Poll::Ready(None) => {
                    self.done = true;
                    if let Some(rewriter) = self.rewriter.take()
                        && let Err(e) = rewriter.end()
                    {
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.output.lock().map(|o| o.is_empty()).unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite_str(html: &str, banner: bool) -> String {
        let is_guest: GuestTest = Arc::new(|n: &str| n == "gary");
        let plan = HtmlPlan {
            tag_users: Some((
                "a.confluence-userlink, a[data-username]"
                    .parse()
                    .expect("selector"),
                is_guest,
            )),
            user_names: Arc::from(vec![UserNameSource {
                attribute: "title".into(),
                pattern: regex::Regex::new(r"^User:(?P<user>[^(]+?)(?: \(page does not exist\))?$")
                    .expect("pattern"),
            }]),
            banner: banner.then(|| banner_html("Shared <with> guests")),
            encoding: encoding_rs::UTF_8,
        };
        String::from_utf8(rewrite_buffer(plan, html.as_bytes()).expect("rewrite")).expect("utf8")
    }

    #[test]
    fn labels_guest_links_and_places_the_banner() {
        let html = "<html><head><title>t</title></head><body class=\"theme\"><p>By \
<a href=\"/display/~gary\" class=\"url fn confluence-userlink\" data-username=\"gary\">Gary</a> and \
<a href=\"/display/~alice\" class=\"confluence-userlink\" data-username=\"alice\">Alice</a> and \
<a class=\"confluence-userlink\" href=\"/users/viewuserprofile.action?username=gary\">G2</a></p></body></html>";
        let out = rewrite_str(html, true);
        assert_eq!(out.matches(LABEL_HTML).count(), 2, "{out}");
        assert!(out.contains(
            "data-username=\"gary\">Gary</a><span class=\"guestgate-guest-label\">GUEST</span>"
        ));
        assert!(out.contains("<body class=\"theme\"><div class=\"guestgate-guest-banner\" role=\"note\">Shared &lt;with&gt; guests</div>"));
        assert_eq!(out.matches("guestgate-style").count(), 1);
        assert!(!out.contains("Alice</a><span"));
    }

    #[test]
    fn profile_sources_name_users_that_confluence_patterns_do_not() {
        let html = "<body><a href=\"/index.php/User:Gary\" class=\"mw-userlink\" title=\"User:gary\"><bdi>Gary</bdi></a> \
<a href=\"/index.php?title=User:Gary&amp;action=edit&amp;redlink=1\" class=\"new mw-userlink\" title=\"User:gary (page does not exist)\"><bdi>Gary</bdi></a> \
<a class=\"mw-userlink\" title=\"User:Alice\">Alice</a></body>";
        let is_guest: GuestTest = Arc::new(|n: &str| n == "gary");
        let plan = HtmlPlan {
            tag_users: Some(("a.mw-userlink".parse().expect("selector"), is_guest)),
            user_names: Arc::from(vec![UserNameSource {
                attribute: "title".into(),
                pattern: regex::Regex::new(r"^User:(?P<user>[^(]+?)(?: \(page does not exist\))?$")
                    .expect("pattern"),
            }]),
            banner: None,
            encoding: encoding_rs::UTF_8,
        };
        let out = String::from_utf8(rewrite_buffer(plan, html.as_bytes()).expect("rewrite"))
            .expect("utf8");
        assert_eq!(out.matches(LABEL_HTML).count(), 2, "{out}");
        assert!(out.contains("<bdi>Gary</bdi></a><span class=\"guestgate-guest-label\">"));
        assert!(!out.contains("Alice</a><span"));
    }

    #[test]
    fn without_banner_the_page_is_unchanged_but_for_labels() {
        let html = "<body><a class=\"confluence-userlink\" data-username=\"alice\">A</a></body>";
        let out = rewrite_str(html, false);
        assert!(!out.contains("role=\"note\""));
        assert!(!out.contains(LABEL_HTML));
    }
}
