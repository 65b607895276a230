//! The gateway's own small HTML pages (refusals, sign-in steps) and the escaping every
//! piece of text put into them goes through.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::{ProxyBody, full_body};

/// Escapes text for an HTML element or a quoted attribute value (`&`, `<`, `>`, `"`, `'`).
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    html_escape::encode_quoted_attribute(text)
}

/// A complete page titled `title` (escaped here) around `body_html` (already escaped by
/// the caller). Never cached: these pages are about one request.
pub fn html(status: StatusCode, title: &str, body_html: &str) -> Response<ProxyBody> {
    let text = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>{t}</h1>{body_html}</body></html>\n",
        t = escape(title)
    );
    let mut response = Response::new(full_body(text));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_character_that_could_close_an_element_or_attribute_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\" title='y'>&</a>"),
            "&lt;a href=&quot;x&quot; title=&#x27;y&#x27;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(escape("plain"), "plain");
    }
}
