//! A guest's `multipart/form-data` body names parameters too: Tomcat and Struts read its
//! form fields as request parameters (Struts' `MultiPartRequestWrapper`). An upload can be
//! large, so it is not held whole: this body wrapper reads the part headers as the bytes
//! stream to the wiki, and a form field (a part without a file name) that names a declared
//! identifier must carry a value the request's other identifiers already had judged. Any
//! other breaks the body off mid-stream — the wiki never receives a complete request, as
//! with a body over its limit — and the client is answered 400.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::http::body::BoxError;
use crate::routes::identifiers::{Identifiers, Kind};

/// Longest part header block read; a longer one is refused.
const MAX_PART_HEADERS: usize = 8 * 1024;
/// Longest identifier value read from a form field.
const MAX_FIELD_VALUE: usize = 256;

/// A form field named an identifier the request's judged ones did not include.
#[derive(Debug, thiserror::Error)]
#[error("a multipart form field names an identifier that was not judged")]
pub struct UnjudgedField;

/// What the scanner is reading.
#[derive(Debug)]
enum State {
    /// Before the first delimiter (a preamble, which MIME allows, is ignored).
    Start,
    /// Right after a delimiter: `--` ends the body, CRLF starts a part's headers.
    AfterDelimiter,
    Headers,
    /// A part's content: an identifier field's value (collected) or anything else.
    Content {
        field: Option<(Kind, String)>,
    },
    Done,
}

/// Reads part headers out of a multipart body as it passes.
pub struct PartScanner {
    identifiers: std::sync::Arc<Identifiers>,
    /// `--boundary`.
    delimiter: Vec<u8>,
    /// (kind, value) pairs a field may repeat.
    judged: Vec<(Kind, String)>,
    state: State,
    pending: Vec<u8>,
    value: Vec<u8>,
}

impl PartScanner {
    /// `content_type` is the request's; `None` when it names no boundary (the wiki could
    /// not read the body as a form either).
    pub fn new(
        content_type: &str,
        identifiers: std::sync::Arc<Identifiers>,
        judged: Vec<(Kind, String)>,
    ) -> Option<PartScanner> {
        let boundary = content_type.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"').to_string())
        })?;
        if boundary.is_empty() {
            return None;
        }
        Some(PartScanner {
            identifiers,
            delimiter: format!("--{boundary}").into_bytes(),
            judged,
            state: State::Start,
            pending: Vec::new(),
            value: Vec::new(),
        })
    }

    /// Reads the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), UnjudgedField> {
        if matches!(self.state, State::Done) {
            return Ok(());
        }
        self.pending.extend_from_slice(chunk);
        loop {
            match &self.state {
                State::Done => {
                    self.pending.clear();
                    return Ok(());
                }
                State::Start => match find(&self.pending, &self.delimiter) {
                    Some(at) => {
                        self.pending.drain(..at + self.delimiter.len());
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        let keep = self.delimiter.len();
                        let cut = self.pending.len().saturating_sub(keep);
                        self.pending.drain(..cut);
                        return Ok(());
                    }
                },
                State::AfterDelimiter => {
                    if self.pending.len() < 2 {
                        return Ok(());
                    }
                    if self.pending.starts_with(b"--") {
                        self.state = State::Done;
                    } else if self.pending.starts_with(b"\r\n") {
                        self.pending.drain(..2);
                        self.state = State::Headers;
                    } else {
                        // Not a delimiter after all (MIME forbids this in content): the
                        // wiki's parser would read it differently than this one.
                        return Err(UnjudgedField);
                    }
                }
                State::Headers => match find(&self.pending, b"\r\n\r\n") {
                    Some(at) => {
                        let field = self.field(&self.pending[..at])?;
                        self.pending.drain(..at + 4);
                        self.value.clear();
                        self.state = State::Content { field };
                    }
                    None if self.pending.len() > MAX_PART_HEADERS => return Err(UnjudgedField),
                    None => return Ok(()),
                },
                State::Content { field } => {
                    let mut end = b"\r\n".to_vec();
                    end.extend_from_slice(&self.delimiter);
                    let collecting = field.is_some();
                    match find(&self.pending, &end) {
                        Some(at) => {
                            if collecting {
                                self.collect(at)?;
                            }
                            self.finish_part()?;
                            self.pending.drain(..at + end.len());
                            self.state = State::AfterDelimiter;
                        }
                        None => {
                            let cut = self.pending.len().saturating_sub(end.len());
                            if collecting {
                                self.collect(cut)?;
                            }
                            self.pending.drain(..cut);
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    fn collect(&mut self, upto: usize) -> Result<(), UnjudgedField> {
        if self.value.len() + upto > MAX_FIELD_VALUE {
            return Err(UnjudgedField);
        }
        self.value.extend_from_slice(&self.pending[..upto]);
        Ok(())
    }

    /// The identifier a part's headers name, when it is a form field (no file name).
    fn field(&self, headers: &[u8]) -> Result<Option<(Kind, String)>, UnjudgedField> {
        let headers = std::str::from_utf8(headers).map_err(|_| UnjudgedField)?;
        let Some(disposition) = headers.split("\r\n").find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-disposition")
                .then_some(value)
        }) else {
            return Ok(None);
        };
        let mut name = None;
        let mut file = false;
        for param in disposition.split(';').skip(1) {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => name = Some(v.to_string()),
                "filename" | "filename*" => file = true,
                _ => {}
            }
        }
        Ok(match (name, file) {
            (Some(name), false) => self
                .identifiers
                .find(&name)
                .map(|i| (i.kind, i.name.clone())),
            _ => None,
        })
    }

    fn finish_part(&mut self) -> Result<(), UnjudgedField> {
        let State::Content {
            field: Some((kind, _)),
        } = &self.state
        else {
            return Ok(());
        };
        let value = std::str::from_utf8(&self.value).map_err(|_| UnjudgedField)?;
        let judged = self.identifiers.is_canonical(*kind, value)
            && self
                .judged
                .iter()
                .any(|(k, v)| k == kind && v.eq_ignore_ascii_case(value));
        if judged { Ok(()) } else { Err(UnjudgedField) }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// A guest's multipart body on its way to the wiki, scanned as it passes.
pub struct GuardedMultipart<B> {
    inner: B,
    scanner: PartScanner,
}

impl<B> GuardedMultipart<B> {
    pub fn new(inner: B, scanner: PartScanner) -> GuardedMultipart<B> {
        GuardedMultipart { inner, scanner }
    }
}

impl<B> Body for GuardedMultipart<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(e) = this.scanner.feed(data)
                {
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::identifiers::page_id_only;

    fn scanner() -> PartScanner {
        let ids = page_id_only();
        PartScanner::new(
            "multipart/form-data; boundary=XyZ",
            std::sync::Arc::new(ids),
            vec![(Kind::Content, "101".into())],
        )
        .unwrap_or_else(|| panic!("boundary"))
    }

    fn body(fields: &[(&str, Option<&str>, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, file, value) in fields {
            b.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"");
            b.extend_from_slice(name.as_bytes());
            b.push(b'"');
            if let Some(f) = file {
                b.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
            }
            b.extend_from_slice(b"\r\n\r\n");
            b.extend_from_slice(value.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    /// Feeds the body in chunks of every size from 1 to its length.
    fn verdicts(b: &[u8]) -> Vec<bool> {
        (1..=b.len())
            .map(|size| {
                let mut s = scanner();
                b.chunks(size).all(|c| s.feed(c).is_ok())
            })
            .collect()
    }

    #[test]
    fn fields_naming_judged_ids_and_files_pass_in_any_chunking() {
        let ok = body(&[
            ("comment", None, "hello"),
            ("PAGEID", None, "101"),
            ("pageId", Some("x.txt"), "202 file content, not a field"),
        ]);
        assert!(verdicts(&ok).into_iter().all(|v| v));
    }

    #[test]
    fn a_field_naming_another_id_breaks_the_body_off() {
        for fields in [
            &[("pageId", None, "202")][..],
            &[("pageid", None, "+101")],
            &[("comment", None, "x"), ("pageId", None, "101 ")],
        ] {
            let bad = body(fields);
            assert!(verdicts(&bad).into_iter().all(|v| !v), "{fields:?}");
        }
    }
}
