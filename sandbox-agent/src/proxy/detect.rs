//! Detection: the name a client asks for, from the first bytes of its connection.
//!
//! Both parsers are pure functions of the bytes received so far; the proxy calls them again
//! as more bytes arrive. They are monotone: once one answers something other than
//! `Incomplete` for a buffer, it gives the same answer for every longer buffer that starts
//! with it, and every strict prefix of an acceptable message gives `Incomplete`. So the proxy
//! can decide on the first answer. Both are strict: what the upstream server could read
//! differently from us (bare line feeds, folded headers, trailing bytes) is refused, not
//! guessed at.
use std::str;

use crate::policy::normalize_name;

/// What the first bytes of a TLS connection say about the name asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsHello {
    /// More bytes are needed to decide.
    Incomplete,
    /// The `server_name` (SNI `host_name`), normalised with [`normalize_name`].
    Sni(String),
    Refused(HelloProblem),
}

/// Why the first bytes of a TLS connection name no destination we can decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloProblem {
    #[error("the connection does not start with a TLS handshake record")]
    NotTls,
    #[error("the first TLS handshake message is not a ClientHello")]
    NotClientHello,
    #[error(
        "the TLS records or the ClientHello are malformed (inconsistent lengths, duplicate \
         extensions, a server_name list that is not exactly one host name, or bytes after the \
         ClientHello in its record)"
    )]
    Malformed,
    #[error("the ClientHello carries no server name (SNI)")]
    NoSni,
    #[error("the ClientHello carries an Encrypted Client Hello extension")]
    Ech,
    #[error("the server name (SNI) in the ClientHello is not a valid host name")]
    BadName,
    #[error("the ClientHello does not fit in {MAX_HELLO_BYTES} bytes")]
    TooLarge,
}

/// Upper bound on the bytes the proxy buffers for a `ClientHello`: one TLS record of the
/// largest size allowed (5-byte header, 2^14-byte fragment). Real hellos stay under 2 KiB,
/// post-quantum key shares included. A hello that has not ended within this many bytes
/// (larger, or cut into many small records) is [`HelloProblem::TooLarge`].
pub const MAX_HELLO_BYTES: usize = RECORD_HEADER + MAX_FRAGMENT;

const RECORD_HEADER: usize = 5;
/// RFC 8446 §5.1: a record fragment is at most 2^14 bytes.
const MAX_FRAGMENT: usize = 1 << 14;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_HEADER: usize = 4;
const EXT_SERVER_NAME: u16 = 0;
/// `encrypted_client_hello`, the TLS Encrypted Client Hello extension.
const EXT_ECH: u16 = 0xfe0d;
/// The encrypted SNI of the drafts that preceded ECH.
const EXT_ESNI: u16 = 0xffce;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// Reads the name asked for from the first bytes a TLS client sent.
pub fn parse_client_hello(buf: &[u8]) -> TlsHello {
    // Only the first MAX_HELLO_BYTES count, so that the answer for a buffer that long is final.
    let window = buf.get(..MAX_HELLO_BYTES).unwrap_or(buf);
    match hello_in(window) {
        Ok(Some(name)) => TlsHello::Sni(name),
        Ok(None) if buf.len() >= MAX_HELLO_BYTES => TlsHello::Refused(HelloProblem::TooLarge),
        Ok(None) => TlsHello::Incomplete,
        Err(problem) => TlsHello::Refused(problem),
    }
}

/// Reassembles the `ClientHello` from the handshake records at the start of `buf` and reads
/// its server name. `Ok(None)`: more bytes are needed. Bytes after the hello are not looked at.
fn hello_in(buf: &[u8]) -> Result<Option<String>, HelloProblem> {
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        // Each header byte is checked as soon as it arrives, so that a client speaking
        // something else is refused after a byte or two rather than after a timeout.
        let not_tls = if message.is_empty() {
            HelloProblem::NotTls
        } else {
            // Before the hello has ended, a client sends nothing but handshake records.
            HelloProblem::Malformed
        };
        match rest.first() {
            None => return Ok(None),
            Some(&CONTENT_HANDSHAKE) => {}
            Some(_) => return Err(not_tls),
        }
        match rest.get(1) {
            None => return Ok(None),
            Some(3) => {}
            Some(_) => return Err(not_tls),
        }
        let Some(&[_, _, _, high, low]) = rest.get(..RECORD_HEADER) else {
            return Ok(None);
        };
        let length = usize::from(u16::from_be_bytes([high, low]));
        // RFC 8446 §5.1: no empty handshake fragments, none over 2^14 bytes.
        if length == 0 || length > MAX_FRAGMENT {
            return Err(HelloProblem::Malformed);
        }
        let after_header = rest.get(RECORD_HEADER..).unwrap_or_default();
        let fragment = after_header.get(..length).unwrap_or(after_header);
        let before = message.len();
        message.extend_from_slice(fragment);
        if message
            .first()
            .is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO)
        {
            return Err(HelloProblem::NotClientHello);
        }
        if let Some(&[_, a, b, c]) = message.get(..HANDSHAKE_HEADER) {
            let total =
                HANDSHAKE_HEADER + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
            // Larger than one record can carry: it cannot end within MAX_HELLO_BYTES.
            if total > MAX_FRAGMENT {
                return Err(HelloProblem::TooLarge);
            }
            // The hello must end where a record ends: a client has nothing else to send in
            // the handshake before the server answers, so more bytes there are an
            // inconsistency (known from the record header, without waiting for the bytes).
            if before + length > total {
                return Err(HelloProblem::Malformed);
            }
            if fragment.len() == length && before + length == total {
                let body = message.get(HANDSHAKE_HEADER..).unwrap_or_default();
                return client_hello_name(body).map(Some);
            }
        }
        let Some(next) = rest.get(RECORD_HEADER + length..) else {
            return Ok(None);
        };
        rest = next;
    }
}

/// The server name of a complete `ClientHello` body (RFC 8446 §4.1.2, RFC 6066 §3).
fn client_hello_name(body: &[u8]) -> Result<String, HelloProblem> {
    let mut hello = Reader(body);
    let [major, _minor] = hello.array()?;
    if major != 3 {
        return Err(HelloProblem::Malformed);
    }
    let _random: [u8; 32] = hello.array()?;
    let session_id = hello.vec8()?;
    let cipher_suites = hello.vec16()?;
    let compression_methods = hello.vec8()?;
    if session_id.len() > 32
        || cipher_suites.is_empty()
        || cipher_suites.len() % 2 != 0
        || compression_methods.is_empty()
    {
        return Err(HelloProblem::Malformed);
    }
    // Before TLS 1.2 a hello may end here, without extensions, hence without a name.
    if hello.is_empty() {
        return Err(HelloProblem::NoSni);
    }
    let mut extensions = Reader(hello.vec16()?);
    hello.end()?;
    let mut types = Vec::new();
    let mut server_name = None;
    while !extensions.is_empty() {
        let [high, low] = extensions.array()?;
        let kind = u16::from_be_bytes([high, low]);
        let data = extensions.vec16()?;
        types.push(kind);
        if kind == EXT_SERVER_NAME {
            server_name = Some(data);
        }
    }
    // RFC 8446 §4.2: no extension type twice (and which server_name would count?).
    types.sort_unstable();
    if types.windows(2).any(|pair| pair.first() == pair.get(1)) {
        return Err(HelloProblem::Malformed);
    }
    // With ECH the clear SNI is the outer name of the client-facing server, not the
    // destination, so whatever it says it cannot be trusted.
    if types.binary_search(&EXT_ECH).is_ok() || types.binary_search(&EXT_ESNI).is_ok() {
        return Err(HelloProblem::Ech);
    }
    host_name(server_name.ok_or(HelloProblem::NoSni)?)
}

/// The one `host_name` of a `server_name` extension.
fn host_name(data: &[u8]) -> Result<String, HelloProblem> {
    let mut extension = Reader(data);
    let mut list = Reader(extension.vec16()?);
    extension.end()?;
    let [name_type] = list.array()?;
    let name = list.vec16()?;
    // Exactly one entry: a second one (of any type) would leave the choice to the server.
    list.end()?;
    if name_type != NAME_TYPE_HOST_NAME {
        return Err(HelloProblem::Malformed);
    }
    let name = str::from_utf8(name).map_err(|_| HelloProblem::BadName)?;
    normalize_name(name).ok_or(HelloProblem::BadName)
}

/// Checked reads from a complete message: running short is [`HelloProblem::Malformed`].
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloProblem> {
        let (head, tail) = self.0.split_at_checked(n).ok_or(HelloProblem::Malformed)?;
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], HelloProblem> {
        self.take(N)?
            .try_into()
            .map_err(|_| HelloProblem::Malformed)
    }

    /// A vector with a one-byte length (`opaque x<0..2^8-1>`).
    fn vec8(&mut self) -> Result<&'a [u8], HelloProblem> {
        let [length] = self.array()?;
        self.take(usize::from(length))
    }

    /// A vector with a two-byte length (`opaque x<0..2^16-1>`).
    fn vec16(&mut self) -> Result<&'a [u8], HelloProblem> {
        let length = u16::from_be_bytes(self.array()?);
        self.take(usize::from(length))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A length that leaves bytes over is as inconsistent as one that runs over.
    fn end(&self) -> Result<(), HelloProblem> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(HelloProblem::Malformed)
        }
    }
}

/// What the first bytes of a plain HTTP connection say about the name asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpHost {
    /// More bytes are needed to decide.
    Incomplete,
    /// The Host header's host (no port), normalised with [`normalize_name`].
    Host(String),
    Refused(HostProblem),
}

/// Why the first bytes of a plain HTTP connection name no destination we can decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostProblem {
    #[error("the connection does not start with an HTTP/1.0 or HTTP/1.1 request line")]
    NotHttp1,
    #[error(
        "the HTTP request header is malformed (a line not ended by CRLF, a folded line, a bad \
         field name or value, a bad port or a request target of an unknown form)"
    )]
    Malformed,
    #[error("the HTTP request has no Host header")]
    NoHost,
    #[error("the HTTP request has more than one Host header")]
    DuplicateHost,
    #[error("the HTTP request's host is not a host name (an IP address or invalid characters)")]
    BadName,
    #[error("the host in the HTTP request target differs from the Host header")]
    AuthorityMismatch,
    #[error("the HTTP request header does not fit in {MAX_HEADER_BYTES} bytes")]
    TooLarge,
}

/// Upper bound on the bytes the proxy buffers for the request line and the header fields.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Reads the host asked for from the first bytes a plain HTTP client sent.
///
/// Lines must end with CRLF. RFC 9112 §2.2 lets a server accept a bare LF, but servers
/// disagree on it (and on bare CR), and a line break that we and the upstream server see
/// differently could hide a second Host: every real client sends CRLF, so the rest is
/// [`HostProblem::Malformed`]. For the same reason an empty line before the request line
/// (which §2.2 lets servers skip) is [`HostProblem::NotHttp1`].
pub fn parse_http_host(buf: &[u8]) -> HttpHost {
    // As for TLS: only the first MAX_HEADER_BYTES count, so the answer for that many is final.
    let window = buf.get(..MAX_HEADER_BYTES).unwrap_or(buf);
    match host_in(window) {
        Ok(Some(name)) => HttpHost::Host(name),
        Ok(None) if buf.len() >= MAX_HEADER_BYTES => HttpHost::Refused(HostProblem::TooLarge),
        Ok(None) => HttpHost::Incomplete,
        Err(problem) => HttpHost::Refused(problem),
    }
}

/// The header section, line by line, deciding at the first line that settles it: so a
/// longer buffer never changes an answer. `Ok(None)`: more bytes are needed.
fn host_in(buf: &[u8]) -> Result<Option<String>, HostProblem> {
    let Some(RequestLine {
        target_host,
        mut rest,
    }) = request_line(buf)?
    else {
        return Ok(None);
    };
    let mut host = None;
    loop {
        let Some((line, next)) = split_line(rest)? else {
            return Ok(None);
        };
        rest = next;
        if line.is_empty() {
            return host.map(Some).ok_or(HostProblem::NoHost);
        }
        // obs-fold (RFC 9112 §5.2): a continuation line, which servers join or reject.
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(HostProblem::Malformed);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HostProblem::Malformed)?;
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default();
        // A token, so whitespace before the colon is refused too (RFC 9112 §5.1).
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Err(HostProblem::Malformed);
        }
        if !value
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
        {
            return Err(HostProblem::Malformed);
        }
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(HostProblem::DuplicateHost);
            }
            let name = authority_host(trim_ows(value))?;
            // RFC 9112 §3.2.2: a server takes the host of an absolute-form target and
            // ignores Host, so the two must agree for our decision to be the server's.
            if target_host.as_ref().is_some_and(|t| *t != name) {
                return Err(HostProblem::AuthorityMismatch);
            }
            host = Some(name);
        }
    }
}

/// Some bytes at the start of a buffer, and the bytes after them (and their delimiter).
type Split<'a> = (&'a [u8], &'a [u8]);

/// The next line without its CRLF, and what follows it. `Ok(None)`: no line end yet.
fn split_line(buf: &[u8]) -> Result<Option<Split<'_>>, HostProblem> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let (line, rest) = buf.split_at(lf);
    let rest = rest.get(1..).unwrap_or_default();
    let line = line.strip_suffix(b"\r").ok_or(HostProblem::Malformed)?;
    if line.contains(&b'\r') {
        return Err(HostProblem::Malformed);
    }
    Ok(Some((line, rest)))
}

/// The request line, and where the header fields start.
struct RequestLine<'a> {
    /// The host of an absolute-form target, `None` for the other forms.
    target_host: Option<String>,
    rest: &'a [u8],
}

/// `method SP request-target SP HTTP/1.x CRLF`, checked byte by byte as it arrives.
/// `Ok(None)`: the line has not ended yet and nothing in it is wrong so far.
fn request_line(buf: &[u8]) -> Result<Option<RequestLine<'_>>, HostProblem> {
    let Some(method) = token_then_space(buf, is_tchar) else {
        return Ok(None);
    };
    let (method, rest) = method?;
    // CONNECT asks for a tunnel; on port 80 that is not plain HTTP to a web server.
    if method == b"CONNECT" {
        return Err(HostProblem::NotHttp1);
    }
    let Some(target) = token_then_space(rest, |b| b.is_ascii_graphic()) else {
        return Ok(None);
    };
    let (target, rest) = target?;
    for (i, &expected) in b"HTTP/1.".iter().enumerate() {
        match rest.get(i) {
            None => return Ok(None),
            Some(&b) if b == expected => {}
            Some(_) => return Err(HostProblem::NotHttp1),
        }
    }
    match rest.get(7) {
        None => return Ok(None),
        Some(b'0' | b'1') => {}
        Some(_) => return Err(HostProblem::NotHttp1),
    }
    match rest.get(8) {
        None => return Ok(None),
        Some(b'\r') => {}
        Some(b'\n') => return Err(HostProblem::Malformed),
        Some(_) => return Err(HostProblem::NotHttp1),
    }
    match rest.get(9) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(HostProblem::Malformed),
    }
    Ok(Some(RequestLine {
        target_host: target_host(method, target)?,
        rest: rest.get(10..).unwrap_or_default(),
    }))
}

/// A non-empty run of bytes accepted by `allowed`, then one space: the run and what follows
/// the space. `None`: not ended yet.
fn token_then_space(
    buf: &[u8],
    allowed: impl Fn(u8) -> bool,
) -> Option<Result<Split<'_>, HostProblem>> {
    let length = buf.iter().take_while(|&&b| allowed(b)).count();
    let after = *buf.get(length)?;
    if length == 0 || after != b' ' {
        return Some(Err(HostProblem::NotHttp1));
    }
    let (token, rest) = buf.split_at(length);
    Some(Ok((token, rest.get(1..).unwrap_or_default())))
}

/// The host of an absolute-form request target (`http://name[:port]/...`), `None` for the
/// origin form (`/path`) and the asterisk form of OPTIONS.
fn target_host(method: &[u8], target: &[u8]) -> Result<Option<String>, HostProblem> {
    if target.starts_with(b"/") || (target == b"*" && method == b"OPTIONS") {
        return Ok(None);
    }
    let Some(separator) = target.windows(3).position(|w| w == b"://") else {
        return Err(HostProblem::Malformed);
    };
    let (scheme, rest) = target.split_at(separator);
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return Err(HostProblem::Malformed);
    }
    let rest = rest.get(3..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = rest.get(..end).unwrap_or_default();
    // `http://allowed.example@other.example/` asks for other.example: refuse the confusion.
    if authority.contains(&b'@') {
        return Err(HostProblem::Malformed);
    }
    authority_host(authority).map(Some)
}

/// `host[:port]` to a normalised name: the port must be a number 1..=65535; IP literals
/// are not names.
fn authority_host(value: &[u8]) -> Result<String, HostProblem> {
    // An IPv6 (or IPvFuture) literal; IPv4 ones are caught by normalize_name.
    if value.first() == Some(&b'[') {
        return Err(HostProblem::BadName);
    }
    let (host, port) = match value.iter().position(|&b| b == b':') {
        Some(colon) => {
            let (host, port) = value.split_at(colon);
            (host, Some(port.get(1..).unwrap_or_default()))
        }
        None => (value, None),
    };
    if let Some(port) = port {
        let valid = (1..=5).contains(&port.len())
            && port.iter().all(u8::is_ascii_digit)
            && str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| p != 0);
        if !valid {
            return Err(HostProblem::Malformed);
        }
    }
    let host = str::from_utf8(host).map_err(|_| HostProblem::BadName)?;
    normalize_name(host).ok_or(HostProblem::BadName)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Strips optional whitespace (SP, HTAB) on both sides.
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    value.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ClientHello`s captured on this machine: a Python listener on 127.0.0.1 saved the first
    /// bytes of one connection from each client, with the name after the file name:
    /// `openssl s_client -connect 127.0.0.1:P -servername allowed.example` (OpenSSL 3.0.19,
    /// TLS 1.3), the same with `-tls1_2`, and with `-noservername`; `curl -k --resolve
    /// api.allowed.example:P:127.0.0.1` (curl 7.88.1, OpenSSL); Python 3.11 `ssl` with
    /// `server_hostname="Allowed.Example"`; Node 20 `tls.connect`; Java 17 `SSLSocket` (JSSE,
    /// not OpenSSL); `wget` (`GnuTLS`) with the name mapped to 127.0.0.1 by a private
    /// /etc/hosts. Each is one record.
    const FIXTURES: [(&str, &[u8], Option<&str>); 8] = [
        (
            "openssl_tls13",
            include_bytes!("fixtures/openssl_tls13.bin"),
            Some("allowed.example"),
        ),
        (
            "openssl_tls12",
            include_bytes!("fixtures/openssl_tls12.bin"),
            Some("allowed.example"),
        ),
        (
            "curl",
            include_bytes!("fixtures/curl.bin"),
            Some("api.allowed.example"),
        ),
        (
            "python",
            include_bytes!("fixtures/python.bin"),
            Some("allowed.example"),
        ),
        (
            "node",
            include_bytes!("fixtures/node.bin"),
            Some("node.allowed.example"),
        ),
        (
            "java",
            include_bytes!("fixtures/java.bin"),
            Some("java.allowed.example"),
        ),
        (
            "wget_gnutls",
            include_bytes!("fixtures/wget_gnutls.bin"),
            Some("wget.allowed.example"),
        ),
        (
            "openssl_nosni",
            include_bytes!("fixtures/openssl_nosni.bin"),
            None,
        ),
    ];

    fn with_sni() -> impl Iterator<Item = (&'static str, &'static [u8], &'static str)> {
        FIXTURES
            .into_iter()
            .filter_map(|(file, bytes, name)| Some((file, bytes, name?)))
    }

    fn sni(name: &str) -> TlsHello {
        TlsHello::Sni(name.to_owned())
    }

    fn refused(problem: HelloProblem) -> TlsHello {
        TlsHello::Refused(problem)
    }

    fn be16(bytes: &[u8]) -> usize {
        usize::from(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u16_len(data: &[u8]) -> [u8; 2] {
        u16::try_from(data.len()).unwrap().to_be_bytes()
    }

    /// The handshake bytes carried by the (well-formed) records of `stream`.
    fn message_of(stream: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        let mut rest = stream;
        while rest.len() >= RECORD_HEADER {
            let length = be16(&rest[3..]);
            message.extend_from_slice(&rest[5..5 + length]);
            rest = &rest[5 + length..];
        }
        message
    }

    /// `message` in handshake records, cut at each offset of `cuts` (ascending).
    fn frame(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut stream = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([message.len()].iter()) {
            let fragment = &message[start..end];
            stream.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            stream.extend_from_slice(&u16_len(fragment));
            stream.extend_from_slice(fragment);
            start = end;
        }
        stream
    }

    /// A captured hello taken apart, to be put together again with changes.
    struct Hello {
        /// The body up to the extensions.
        head: Vec<u8>,
        extensions: Vec<(u16, Vec<u8>)>,
    }

    impl Hello {
        fn parse(stream: &[u8]) -> Self {
            let message = message_of(stream);
            let body = &message[4..];
            let mut at = 2 + 32;
            at += 1 + usize::from(body[at]);
            at += 2 + be16(&body[at..]);
            at += 1 + usize::from(body[at]);
            let head = body[..at].to_vec();
            let mut extensions = Vec::new();
            if at < body.len() {
                let end = at + 2 + be16(&body[at..]);
                at += 2;
                while at < end {
                    let kind = u16::from_be_bytes([body[at], body[at + 1]]);
                    let length = be16(&body[at + 2..]);
                    extensions.push((kind, body[at + 4..at + 4 + length].to_vec()));
                    at += 4 + length;
                }
            }
            Self { head, extensions }
        }

        fn message(&self) -> Vec<u8> {
            let mut block = Vec::new();
            for (kind, data) in &self.extensions {
                block.extend_from_slice(&kind.to_be_bytes());
                block.extend_from_slice(&u16_len(data));
                block.extend_from_slice(data);
            }
            let mut body = self.head.clone();
            body.extend_from_slice(&u16_len(&block));
            body.extend_from_slice(&block);
            handshake(&body)
        }

        fn stream(&self) -> Vec<u8> {
            frame(&self.message(), &[])
        }

        fn set(&mut self, kind: u16, data: Vec<u8>) {
            match self.extensions.iter_mut().find(|(k, _)| *k == kind) {
                Some(extension) => extension.1 = data,
                None => self.extensions.push((kind, data)),
            }
        }
    }

    /// A `ClientHello` handshake message around `body`.
    fn handshake(body: &[u8]) -> Vec<u8> {
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        message.extend_from_slice(body);
        message
    }

    /// The data of a `server_name` extension with these (`name_type`, name) entries.
    fn server_name(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend_from_slice(&u16_len(name));
            list.extend_from_slice(name);
        }
        let mut data = u16_len(&list).to_vec();
        data.extend_from_slice(&list);
        data
    }

    /// Offset and width of every length field of a one-record hello, outermost first: the
    /// record's, the handshake's, then those inside the hello.
    fn length_fields(stream: &[u8]) -> Vec<(usize, usize)> {
        let mut fields = vec![(3, 2), (6, 3)];
        let mut at = RECORD_HEADER + HANDSHAKE_HEADER + 2 + 32;
        fields.push((at, 1));
        at += 1 + usize::from(stream[at]);
        fields.push((at, 2));
        at += 2 + be16(&stream[at..]);
        fields.push((at, 1));
        at += 1 + usize::from(stream[at]);
        if at == stream.len() {
            return fields;
        }
        fields.push((at, 2));
        at += 2;
        while at < stream.len() {
            fields.push((at + 2, 2));
            if be16(&stream[at..]) == usize::from(EXT_SERVER_NAME) {
                // The server_name list, then the first name.
                fields.push((at + 4, 2));
                fields.push((at + 7, 2));
            }
            at += 4 + be16(&stream[at + 2..]);
        }
        fields
    }

    /// Adds `delta` to a big-endian field, wrapping within its width.
    fn add_to_field(stream: &mut [u8], (offset, width): (usize, usize), delta: i64) {
        let field = &mut stream[offset..offset + width];
        let value = field
            .iter()
            .fold(0_i64, |value, &b| value << 8 | i64::from(b));
        let modulus = 1_i64 << (8 * width);
        let changed = (value + delta).rem_euclid(modulus).to_be_bytes();
        field.copy_from_slice(&changed[8 - width..]);
    }

    /// What the proxy relies on: an answer other than Incomplete stays when more bytes come,
    /// and shorter buffers answer Incomplete or the same.
    fn assert_tls_monotone(input: &[u8], check_prefixes: bool) {
        let full = parse_client_hello(input);
        if full != TlsHello::Incomplete {
            let mut longer = input.to_vec();
            longer.extend_from_slice(input);
            longer.push(CONTENT_HANDSHAKE);
            assert_eq!(parse_client_hello(&longer), full, "{input:02x?}");
        }
        if check_prefixes {
            for n in 0..input.len() {
                let prefix = parse_client_hello(&input[..n]);
                assert!(
                    prefix == TlsHello::Incomplete || prefix == full,
                    "prefix {n} gives {prefix:?}, the whole {full:?}"
                );
            }
        }
    }

    fn assert_prefixes_incomplete(stream: &[u8], what: &str) {
        for n in 0..stream.len() {
            assert_eq!(
                parse_client_hello(&stream[..n]),
                TlsHello::Incomplete,
                "{what}: prefix of {n} bytes"
            );
        }
    }

    /// xorshift64*: reproducible noise without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next().to_le_bytes()[0]).collect()
        }
    }

    #[test]
    fn fixtures_give_their_name() {
        for (file, stream, name) in FIXTURES {
            let expected = name.map_or(refused(HelloProblem::NoSni), sni);
            assert_eq!(parse_client_hello(stream), expected, "{file}");
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for (file, stream, _) in FIXTURES {
            assert_prefixes_incomplete(stream, file);
        }
    }

    #[test]
    fn bytes_after_the_hello_are_not_read() {
        for (file, stream, name) in with_sni() {
            let mut longer = stream.to_vec();
            // A middlebox-compatibility ChangeCipherSpec record, then noise.
            longer.extend_from_slice(&[20, 3, 3, 0, 1, 1, 0xff, 0, 0x16]);
            assert_eq!(parse_client_hello(&longer), sni(name), "{file}");
        }
    }

    #[test]
    fn a_hello_split_across_records_gives_the_same_name() {
        for (file, stream, name) in with_sni() {
            let message = message_of(stream);
            let len = message.len();
            let all_cuts: Vec<usize> = (1..len).collect();
            let every_100: Vec<usize> = (100..len).step_by(100).collect();
            let splits: [&[usize]; 8] = [
                &[1],
                &[3],
                &[4],
                &[5],
                &[len / 2],
                &[len - 1],
                &every_100,
                &all_cuts,
            ];
            for cuts in splits {
                let reframed = frame(&message, cuts);
                assert_eq!(parse_client_hello(&reframed), sni(name), "{file} {cuts:?}");
            }
            assert_prefixes_incomplete(&frame(&message, &[len / 2]), file);
            assert_prefixes_incomplete(&frame(&message, &every_100), file);
        }
    }

    #[test]
    fn bytes_after_the_hello_in_its_record_are_malformed() {
        for (file, stream, _) in with_sni() {
            let mut message = message_of(stream);
            message.push(0);
            let stream = frame(&message, &[]);
            assert_eq!(
                parse_client_hello(&stream),
                refused(HelloProblem::Malformed),
                "{file}"
            );
            // Known from the record header, before the bytes arrive.
            assert_eq!(
                parse_client_hello(&stream[..9]),
                refused(HelloProblem::Malformed),
                "{file}"
            );
        }
    }

    #[test]
    fn mutated_lengths_are_refused_without_panic() {
        for (file, stream, _) in FIXTURES {
            for (index, field) in length_fields(stream).into_iter().enumerate() {
                for delta in [1, -1] {
                    let mut mutated = stream.to_vec();
                    add_to_field(&mut mutated, field, delta);
                    let result = parse_client_hello(&mutated);
                    let expected = match (index, delta) {
                        // The record claims a byte more than the hello: known at once.
                        (0, 1) | (1, -1) => refused(HelloProblem::Malformed),
                        // The hello claims a byte more: it waits for another record.
                        (1, _) => TlsHello::Incomplete,
                        // The record ends before the hello; what follows decides.
                        (0, _) => {
                            assert!(
                                matches!(
                                    result,
                                    TlsHello::Incomplete
                                        | TlsHello::Refused(HelloProblem::Malformed)
                                ),
                                "{file} record length -1: {result:?}"
                            );
                            result.clone()
                        }
                        _ => refused(HelloProblem::Malformed),
                    };
                    assert_eq!(result, expected, "{file} field {index} {field:?} {delta:+}");
                    assert_tls_monotone(&mutated, true);
                }
            }
        }
    }

    #[test]
    fn any_byte_changed_does_not_panic() {
        for (_, stream, _) in FIXTURES {
            for at in 0..stream.len() {
                for change in [0x00, 0xff, stream[at] ^ 0x01, stream[at] ^ 0x80] {
                    let mut mutated = stream.to_vec();
                    mutated[at] = change;
                    assert_tls_monotone(&mutated, false);
                }
            }
        }
    }

    #[test]
    fn random_bytes_do_not_panic() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for round in 0..4000 {
            let mut input = Vec::new();
            if round % 2 == 1 {
                // Past the first checks, so that the noise reaches the hello parser.
                let body_len = rng.below(600);
                input.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
                input.extend_from_slice(&u16::try_from(body_len + 4).unwrap().to_be_bytes());
                input.extend_from_slice(&handshake(&rng.bytes(body_len)));
            } else {
                let len = rng.below(700);
                input = rng.bytes(len);
            }
            assert_tls_monotone(&input, round % 50 == 0);
        }
        // Noise inside a real hello's extensions.
        for (_, stream, _) in FIXTURES {
            for _ in 0..200 {
                let mut mutated = stream.to_vec();
                for _ in 0..=rng.below(4) {
                    let at = 9 + rng.below(mutated.len() - 9);
                    mutated[at] = rng.bytes(1)[0];
                }
                assert_tls_monotone(&mutated, false);
            }
        }
    }

    #[test]
    fn ech_is_refused_even_with_an_sni() {
        for (file, stream, _) in FIXTURES {
            for kind in [EXT_ECH, EXT_ESNI] {
                let mut hello = Hello::parse(stream);
                // An outer ECH extension: type, KDF, AEAD, config id, enc, payload (the
                // contents do not matter, only the type).
                let mut payload = vec![0, 0, 1, 0, 1, 0x2a, 0, 32];
                payload.extend_from_slice(&[0x11; 32]);
                payload.extend_from_slice(&[0, 16]);
                payload.extend_from_slice(&[0x22; 16]);
                let last = hello.extensions.len().saturating_sub(1);
                hello.extensions.insert(last, (kind, payload));
                let ech = hello.stream();
                assert_eq!(
                    parse_client_hello(&ech),
                    refused(HelloProblem::Ech),
                    "{file}"
                );
                assert_prefixes_incomplete(&ech, file);
            }
        }
    }

    #[test]
    fn duplicate_extensions_are_malformed() {
        for (file, stream, _) in with_sni() {
            let mut hello = Hello::parse(stream);
            let first = hello.extensions[1].clone();
            hello.extensions.push(first);
            assert_eq!(
                parse_client_hello(&hello.stream()),
                refused(HelloProblem::Malformed),
                "{file}"
            );
            // Two server_name extensions, each well formed: which would the server use?
            let mut hello = Hello::parse(stream);
            hello
                .extensions
                .push((EXT_SERVER_NAME, server_name(&[(0, b"other.example")])));
            assert_eq!(
                parse_client_hello(&hello.stream()),
                refused(HelloProblem::Malformed),
                "{file}"
            );
        }
    }

    #[test]
    fn the_server_name_list_holds_one_host_name() {
        let (_, stream, _) = FIXTURES[0];
        let bad: [Vec<u8>; 5] = [
            server_name(&[(0, b"allowed.example"), (0, b"other.example")]),
            server_name(&[(0, b"allowed.example"), (1, b"other.example")]),
            server_name(&[(1, b"allowed.example")]),
            server_name(&[]),
            Vec::new(),
        ];
        for data in bad {
            let mut hello = Hello::parse(stream);
            hello.set(EXT_SERVER_NAME, data.clone());
            assert_eq!(
                parse_client_hello(&hello.stream()),
                refused(HelloProblem::Malformed),
                "{data:02x?}"
            );
        }
    }

    #[test]
    fn server_names_are_normalised_or_refused() {
        let (_, stream, _) = FIXTURES[0];
        let long = "a.".repeat(130);
        let cases: [(&[u8], TlsHello); 11] = [
            (b"Allowed.EXAMPLE.", sni("allowed.example")),
            (b"_srv.allowed.example", sni("_srv.allowed.example")),
            (b"127.0.0.1", refused(HelloProblem::BadName)),
            (b"allowed.example\0.other", refused(HelloProblem::BadName)),
            (b"allowed example", refused(HelloProblem::BadName)),
            (b"allowed.example:443", refused(HelloProblem::BadName)),
            (b"a..example", refused(HelloProblem::BadName)),
            (b"", refused(HelloProblem::BadName)),
            (b"\xff\xfe.example", refused(HelloProblem::BadName)),
            (
                "b\u{fc}cher.example".as_bytes(),
                refused(HelloProblem::BadName),
            ),
            (long.as_bytes(), refused(HelloProblem::BadName)),
        ];
        for (name, expected) in cases {
            let mut hello = Hello::parse(stream);
            hello.set(EXT_SERVER_NAME, server_name(&[(0, name)]));
            assert_eq!(
                parse_client_hello(&hello.stream()),
                expected,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn hellos_without_a_server_name() {
        let (_, stream, _) = FIXTURES[0];
        let mut hello = Hello::parse(stream);
        hello
            .extensions
            .retain(|(kind, _)| *kind != EXT_SERVER_NAME);
        assert_eq!(
            parse_client_hello(&hello.stream()),
            refused(HelloProblem::NoSni)
        );
        hello.extensions.clear();
        assert_eq!(
            parse_client_hello(&hello.stream()),
            refused(HelloProblem::NoSni)
        );
        // No extensions block at all, as before TLS 1.2.
        let bare = frame(&handshake(&hello.head), &[]);
        assert_eq!(parse_client_hello(&bare), refused(HelloProblem::NoSni));
        assert_prefixes_incomplete(&bare, "no extensions");
    }

    #[test]
    fn other_protocols_are_told_apart_at_once() {
        let cases: [(&[u8], TlsHello); 9] = [
            (b"", TlsHello::Incomplete),
            (b"G", refused(HelloProblem::NotTls)),
            (b"GET / HTTP/1.1\r\n", refused(HelloProblem::NotTls)),
            (b"SSH-2.0-OpenSSH_9.2\r\n", refused(HelloProblem::NotTls)),
            // An SSLv2-compatible hello.
            (
                &[0x80, 0x2e, 0x01, 0x03, 0x01],
                refused(HelloProblem::NotTls),
            ),
            (&[22], TlsHello::Incomplete),
            (&[22, 2], refused(HelloProblem::NotTls)),
            // An alert record first.
            (&[21, 3, 1, 0, 2, 2, 40], refused(HelloProblem::NotTls)),
            // A ServerHello.
            (&[22, 3, 3, 0, 4, 2], refused(HelloProblem::NotClientHello)),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_client_hello(input), expected, "{input:02x?}");
        }
    }

    #[test]
    fn bad_records_are_malformed() {
        let cases: [&[u8]; 5] = [
            // An empty record.
            &[22, 3, 1, 0, 0],
            // A record over 2^14 bytes.
            &[22, 3, 1, 0x40, 0x01, 1],
            // The hello begins, then an alert record.
            &[22, 3, 1, 0, 2, 1, 0, 21, 3, 1, 0, 2, 2, 40],
            // The hello begins, then a record of another version family.
            &[22, 3, 1, 0, 2, 1, 0, 22, 4],
            // A legacy_version that is not 3.x.
            &[22, 3, 1, 0, 6, 1, 0, 0, 2, 2, 0],
        ];
        for input in cases {
            assert_eq!(
                parse_client_hello(input),
                refused(HelloProblem::Malformed),
                "{input:02x?}"
            );
        }
    }

    #[test]
    fn hellos_past_the_limit_are_too_large() {
        // Declared larger than one record can carry: known from the handshake header.
        let declared = [22, 3, 1, 0x40, 0x00, 1, 0x00, 0x3f, 0xfd];
        assert_eq!(
            parse_client_hello(&declared),
            refused(HelloProblem::TooLarge)
        );
        assert_eq!(parse_client_hello(&declared[..8]), TlsHello::Incomplete);

        // A real hello padded to fill one record exactly fits; one byte more does not.
        let (_, stream, _) = FIXTURES[0];
        let mut hello = Hello::parse(stream);
        hello.extensions.retain(|(kind, _)| *kind != 0x15);
        let padding = MAX_HELLO_BYTES - hello.stream().len() - 4;
        hello.extensions.push((0x15, vec![0; padding]));
        let full = hello.stream();
        assert_eq!(full.len(), MAX_HELLO_BYTES);
        assert_eq!(parse_client_hello(&full), sni("allowed.example"));
        assert_eq!(
            parse_client_hello(&full[..full.len() - 1]),
            TlsHello::Incomplete
        );
        // One byte more needs a second record (a record over 2^14 bytes is malformed).
        hello.extensions.last_mut().unwrap().1.push(0);
        let message = hello.message();
        let two_records = frame(&message, &[message.len() / 2]);
        assert_eq!(
            parse_client_hello(&two_records[..9]),
            refused(HelloProblem::TooLarge)
        );

        // Under the limit but cut into small records, so that it does not end in time.
        let message = Hello::parse(stream).message();
        let mut big = message.clone();
        big.resize(16_300, 0);
        big[1..4].copy_from_slice(&u32::try_from(16_300 - 4).unwrap().to_be_bytes()[1..]);
        let cuts: Vec<usize> = (500..big.len()).step_by(500).collect();
        let framed = frame(&big, &cuts);
        assert!(framed.len() > MAX_HELLO_BYTES);
        assert_eq!(
            parse_client_hello(&framed[..MAX_HELLO_BYTES - 1]),
            TlsHello::Incomplete
        );
        assert_eq!(
            parse_client_hello(&framed[..MAX_HELLO_BYTES]),
            refused(HelloProblem::TooLarge)
        );
        assert_eq!(parse_client_hello(&framed), refused(HelloProblem::TooLarge));
    }

    #[test]
    fn problems_read_as_sentences() {
        assert_eq!(
            HelloProblem::Ech.to_string(),
            "the ClientHello carries an Encrypted Client Hello extension"
        );
        assert_eq!(
            HelloProblem::TooLarge.to_string(),
            "the ClientHello does not fit in 16389 bytes"
        );
        assert_eq!(
            HostProblem::TooLarge.to_string(),
            "the HTTP request header does not fit in 16384 bytes"
        );
    }

    // HTTP/1.x

    /// Requests captured the same way as the hellos (the listener on 127.0.0.1).
    const CURL: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: allowed.example:45021\r\n\
        User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    const WGET: &[u8] = b"GET / HTTP/1.1\r\nHost: wget.allowed.example:45022\r\n\
        User-Agent: Wget/1.21.3\r\nAccept: */*\r\nAccept-Encoding: identity\r\n\
        Connection: Keep-Alive\r\n\r\n";
    const PYTHON: &[u8] =
        b"GET /status?x=1 HTTP/1.1\r\nAccept-Encoding: identity\r\nHost: py.allowed.example\r\n\r\n";

    enum Want {
        Host(&'static str),
        No(HostProblem),
    }

    impl Want {
        fn result(&self) -> HttpHost {
            match self {
                Want::Host(name) => HttpHost::Host((*name).to_owned()),
                Want::No(problem) => HttpHost::Refused(*problem),
            }
        }
    }

    use HostProblem::{AuthorityMismatch, BadName, DuplicateHost, Malformed, NoHost, NotHttp1};

    const REQUESTS: [(&[u8], Want); 58] = [
        (CURL, Want::Host("allowed.example")),
        (WGET, Want::Host("wget.allowed.example")),
        (PYTHON, Want::Host("py.allowed.example")),
        (
            b"GET / HTTP/1.0\r\nhost:allowed.example\r\n\r\n",
            Want::Host("allowed.example"),
        ),
        (
            b"POST /x HTTP/1.1\r\nHOST: \t Allowed.Example. \t\r\nContent-Length: 3\r\n\r\nabc",
            Want::Host("allowed.example"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example:65535\r\n\r\n",
            Want::Host("a.example"),
        ),
        (
            b"GET / HTTP/1.1\r\nX-Bytes: \x80\xff\t!\r\nHost: a.example\r\n\r\n",
            Want::Host("a.example"),
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::Host("a.example"),
        ),
        (
            b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::Host("a.example"),
        ),
        (
            b"GET HTTP://A.example:80?q HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
            Want::Host("a.example"),
        ),
        (
            b"GET https://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::Host("a.example"),
        ),
        (
            b"get / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::Host("a.example"),
        ),
        // Not HTTP/1.x.
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Want::No(NotHttp1)),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            Want::No(NotHttp1),
        ),
        (
            b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
            Want::No(NotHttp1),
        ),
        (
            b"GET / HTTP/1.2\r\nHost: a.example\r\n\r\n",
            Want::No(NotHttp1),
        ),
        (
            b"GET / http/1.1\r\nHost: a.example\r\n\r\n",
            Want::No(NotHttp1),
        ),
        (
            b"GET / HTTP/1.10\r\nHost: a.example\r\n\r\n",
            Want::No(NotHttp1),
        ),
        (
            b"GET  / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::No(NotHttp1),
        ),
        (b"GET /\r\n", Want::No(NotHttp1)),
        (
            b"GET / HTTP/1.1 \r\nHost: a.example\r\n\r\n",
            Want::No(NotHttp1),
        ),
        (
            b"\r\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::No(NotHttp1),
        ),
        (
            b"G(T / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::No(NotHttp1),
        ),
        (
            b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::No(NotHttp1),
        ),
        // Line ends other than CRLF.
        (b"GET / HTTP/1.1\nHost: a.example\n\n", Want::No(Malformed)),
        (
            b"GET / HTTP/1.1\r\rHost: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nX: 1\nHost: b.example\r\nHost: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nX: a\rb\r\nHost: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example\r\n\n",
            Want::No(Malformed),
        ),
        // Header fields.
        (
            b"GET / HTTP/1.1\r\nHost: a.example\r\nX: b\r\n c\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nX: b\r\n\tHost: b.example\r\nHost: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nHost : a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nHost\t: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\n Host: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nHost a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\n: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nX\x00: 1\r\nHost: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example\x00.b\r\n\r\n",
            Want::No(Malformed),
        ),
        // Host.
        (b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", Want::No(NoHost)),
        (b"GET / HTTP/1.0\r\n\r\n", Want::No(NoHost)),
        (b"GET http://a.example/ HTTP/1.1\r\n\r\n", Want::No(NoHost)),
        (
            b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n",
            Want::No(DuplicateHost),
        ),
        (
            b"GET / HTTP/1.1\r\nhOST: a.example\r\nX: 1\r\nHOST: b.example\r\n\r\n",
            Want::No(DuplicateHost),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            Want::No(BadName),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n",
            Want::No(BadName),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            Want::No(BadName),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n",
            Want::No(BadName),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
            Want::No(BadName),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: \xc3\xa9.example\r\n\r\n",
            Want::No(BadName),
        ),
        (b"GET / HTTP/1.1\r\nHost:   \r\n\r\n", Want::No(BadName)),
        (
            b"GET / HTTP/1.1\r\nHost: a.example:0\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example:65536\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example:\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example:8o\r\n\r\n",
            Want::No(Malformed),
        ),
        // Absolute-form targets.
        (
            b"GET http://b.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::No(AuthorityMismatch),
        ),
        (
            b"GET http://a.example@b.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET ftp://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
    ];

    const MORE_REQUESTS: [(&[u8], Want); 5] = [
        (
            b"GET http://[::1]/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::No(BadName),
        ),
        (
            b"GET a.example HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        (
            b"GET * HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Want::No(Malformed),
        ),
        // Two Host headers, the first one already bad: the first problem met is the answer.
        (
            b"GET / HTTP/1.1\r\nHost: [::1]\r\nHost: a.example\r\n\r\n",
            Want::No(BadName),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: [::1]\r\n\r\n",
            Want::No(DuplicateHost),
        ),
    ];

    #[test]
    fn http_requests_give_their_host() {
        for (request, want) in REQUESTS.iter().chain(MORE_REQUESTS.iter()) {
            let text = String::from_utf8_lossy(request);
            let expected = want.result();
            assert_eq!(parse_http_host(request), expected, "{text:?}");
            // Bytes after the header section (a body, a pipelined request) are not read.
            let mut longer = request.to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n\n\r");
            assert_eq!(
                parse_http_host(&longer),
                expected,
                "{text:?} with more bytes"
            );
            let header_end = request
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(request.len(), |at| at + 4);
            for n in 0..request.len() {
                let prefix = parse_http_host(&request[..n]);
                match want {
                    Want::Host(_) if n < header_end => {
                        assert_eq!(prefix, HttpHost::Incomplete, "{text:?} [..{n}]");
                    }
                    Want::Host(_) => assert_eq!(prefix, expected, "{text:?} [..{n}]"),
                    Want::No(_) => assert!(
                        prefix == HttpHost::Incomplete || prefix == expected,
                        "{text:?} [..{n}] gives {prefix:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn other_protocols_are_not_http_from_the_first_bytes() {
        let cases: [&[u8]; 5] = [
            &[0x16],
            b"PRI * HTTP/2",
            b"SSH-2.0-OpenSSH_9.2\r",
            b"GET / HTTP/2",
            b"CONNECT ",
        ];
        for input in cases {
            assert_eq!(
                parse_http_host(input),
                HttpHost::Refused(NotHttp1),
                "{input:02x?}"
            );
        }
        assert_eq!(parse_http_host(b""), HttpHost::Incomplete);
        assert_eq!(parse_http_host(b"GET"), HttpHost::Incomplete);
    }

    #[test]
    fn http_headers_past_the_limit_are_too_large() {
        let head = b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Fill: ";
        let mut request = head.to_vec();
        request.resize(MAX_HEADER_BYTES - 4, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        assert_eq!(request.len(), MAX_HEADER_BYTES);
        assert_eq!(
            parse_http_host(&request),
            HttpHost::Host("a.example".into())
        );

        let mut request = head.to_vec();
        request.resize(MAX_HEADER_BYTES - 3, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_http_host(&request[..MAX_HEADER_BYTES - 1]),
            HttpHost::Incomplete
        );
        assert_eq!(
            parse_http_host(&request),
            HttpHost::Refused(HostProblem::TooLarge)
        );
        let endless = vec![b'a'; 2 * MAX_HEADER_BYTES];
        let mut endless_target = b"GET /".to_vec();
        endless_target.extend_from_slice(&endless);
        assert_eq!(
            parse_http_host(&endless_target),
            HttpHost::Refused(HostProblem::TooLarge)
        );
    }

    #[test]
    fn http_noise_does_not_panic() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let alphabet = b"GET / HTTP/1.1\r\nHost: a.example:80[]@*http://\t\x00\xff";
        for round in 0..4000 {
            let mut input = if round % 2 == 0 {
                b"GET / HTTP/1.1\r\n".to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..rng.below(120) {
                input.push(alphabet[rng.below(alphabet.len())]);
            }
            let full = parse_http_host(&input);
            if full != HttpHost::Incomplete {
                let mut longer = input.clone();
                longer.extend_from_slice(&input);
                assert_eq!(parse_http_host(&longer), full, "{input:02x?}");
            }
        }
        // Noise in the captured requests.
        for request in [CURL, WGET, PYTHON] {
            for at in 0..request.len() {
                for change in [b'\n', b'\r', b' ', b':', 0, 0xff] {
                    let mut mutated = request.to_vec();
                    mutated[at] = change;
                    let full = parse_http_host(&mutated);
                    for n in 0..mutated.len() {
                        let prefix = parse_http_host(&mutated[..n]);
                        assert!(prefix == HttpHost::Incomplete || prefix == full);
                    }
                }
            }
        }
    }
}
