//! Which sandbox port a gateway request is for, where its connect token is, and what the
//! workload receives instead of what the client sent. Pure functions over `http` types.
use http::{HeaderMap, HeaderValue, Uri, header};

/// The query parameter and cookie that carry a connect token.
pub const TOKEN_PARAM: &str = "_sandbox_connect_token";
/// The header with the token's user metadata, set only by the gateway.
pub const VERIFIED_USER_DATA: &str = "x-verified-user-data";
/// The header `private_ports` sandboxes require on every request.
pub const TRAFFIC_TOKEN: &str = "x-sandbox-traffic-token";
/// Path prefix of routing by path: `/_sandbox/{sandbox}/{port}/...`.
pub const PATH_PREFIX: &str = "/_sandbox/";

/// A request's target: a sandbox (id or name) and one of its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub sandbox: String,
    pub port: u16,
    /// Routing by path: the prefix to strip (`/_sandbox/{sandbox}/{port}`).
    pub prefix: Option<String>,
}

/// Routes by host name `{port}-{sandbox}.{domain}` (any port of the gateway), else by path.
pub fn find(uri: &Uri, headers: &HeaderMap, domain: &str) -> Option<Route> {
    let host = uri
        .host()
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    by_host(&host, domain).or_else(|| by_path(uri.path()))
}

fn by_host(host: &str, domain: &str) -> Option<Route> {
    // Without the port; names are case-insensitive.
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let label = host.strip_suffix(&format!(".{}", domain.to_ascii_lowercase()))?;
    let (port, sandbox) = label.split_once('-')?;
    let port = port.parse().ok().filter(|p| *p != 0)?;
    (!sandbox.is_empty()).then(|| Route {
        sandbox: sandbox.to_owned(),
        port,
        prefix: None,
    })
}

fn by_path(path: &str) -> Option<Route> {
    let rest = path.strip_prefix(PATH_PREFIX)?;
    let mut parts = rest.splitn(3, '/');
    let sandbox = parts.next().filter(|s| !s.is_empty())?;
    let raw_port = parts.next()?;
    // Digits only, no sign or leading zero: the prefix stripped is exactly what was matched.
    if raw_port.starts_with('0') || !raw_port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port = raw_port.parse().ok().filter(|p| *p != 0)?;
    Some(Route {
        sandbox: sandbox.to_owned(),
        port,
        prefix: Some(format!("{PATH_PREFIX}{sandbox}/{raw_port}")),
    })
}

/// Where a connect token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Bearer,
    /// The query parameter: the response sets the cookie, so that the page's further
    /// requests (links, scripts) carry it.
    Query,
    Cookie,
}

/// The connect token of a request: `Authorization: Bearer`, then the query parameter, then
/// the cookie. Routes by path share one origin (the gateway's address) for every sandbox,
/// where a cookie would be sent to, and readable by, any sandbox's pages: they take the
/// bearer header only.
pub fn token(uri: &Uri, headers: &HeaderMap, route: &Route) -> Option<(String, TokenSource)> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some((t.to_owned(), TokenSource::Bearer));
    }
    if route.prefix.is_some() {
        return None;
    }
    if let Some(t) = uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == TOKEN_PARAM)
            .map(|(_, v)| v.to_owned())
    }) && !t.is_empty()
    {
        return Some((t, TokenSource::Query));
    }
    cookies(headers)
        .find(|(k, _)| *k == TOKEN_PARAM)
        .map(|(_, v)| (v.to_owned(), TokenSource::Cookie))
        .filter(|(t, _)| !t.is_empty())
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    cookie_pairs(headers).filter_map(|kv| kv.split_once('='))
}

/// Every `name=value` (or bare) cookie of the request, as sent.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
}

/// The path and query the workload sees: without the routing prefix and the token
/// parameter.
pub fn upstream_path(uri: &Uri, route: &Route) -> String {
    let path = uri.path();
    let path = match &route.prefix {
        Some(prefix) => path.strip_prefix(prefix.as_str()).unwrap_or(path),
        None => path,
    };
    let path = if path.is_empty() { "/" } else { path };
    // Only the token parameter goes; the rest stays as sent (signed URLs depend on it).
    match uri.query() {
        None => path.to_owned(),
        Some(q) if !q.split('&').any(|kv| is_token_param(&kv)) => format!("{path}?{q}"),
        Some(q) => {
            let kept: Vec<&str> = q.split('&').filter(|kv| !is_token_param(kv)).collect();
            if kept.iter().all(|kv| kv.is_empty()) {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
    }
}

fn is_token_param(kv: &&str) -> bool {
    kv.split_once('=').map_or(*kv, |(k, _)| k) == TOKEN_PARAM
}

/// Whether a header name is one the gateway sets, in any spelling a server might fold into
/// the same variable (`X-Verified-User_Data` becomes `HTTP_X_VERIFIED_USER_DATA` in CGI).
fn is_gateway_header(name: &str) -> bool {
    let folded = name.to_ascii_lowercase().replace('_', "-");
    matches!(
        folded.as_str(),
        VERIFIED_USER_DATA
            | TRAFFIC_TOKEN
            | "forwarded"
            | "x-real-ip"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
    )
}

/// Whether a field is one the gateway owns on the way to the workload: the identity, the
/// forwarding headers and `Host`. A client can neither name them as hop-by-hop (which would
/// make the gateway delete its own) nor send them as trailers.
pub fn is_gateway_owned(name: &str) -> bool {
    name.eq_ignore_ascii_case(header::HOST.as_str()) || is_gateway_header(name)
}

/// Fields that describe one connection and go no further than the gateway (the next hop
/// gets its own).
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Whether a client's trailer field may reach the workload: not one the gateway owns, not
/// hop-by-hop, and not one that frames the message.
pub fn trailer_allowed(name: &str) -> bool {
    !is_gateway_owned(name)
        && !HOP_BY_HOP
            .iter()
            .chain(&["trailer", "content-length"])
            .any(|h| name.eq_ignore_ascii_case(h))
}

/// The names a comma-separated field (`Connection`, `Trailer`) lists, over all its lines.
pub fn listed(headers: &HeaderMap, field: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(field)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// Removes every field whose name `drop` picks.
pub fn remove_fields(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let picked: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| drop(k.as_str()))
        .cloned()
        .collect();
    for name in picked {
        headers.remove(name);
    }
}

/// The request's `Trailer` declaration without the fields that may not be trailers (HTTP/1.1
/// upstream sends only declared trailers; the body's trailers are filtered too).
pub fn restrict_trailer_declaration(headers: &mut HeaderMap) {
    let declared: Vec<String> = listed(headers, header::TRAILER)
        .filter(|n| trailer_allowed(n))
        .map(str::to_owned)
        .collect();
    headers.remove(header::TRAILER);
    if !declared.is_empty()
        && let Ok(v) = HeaderValue::from_str(&declared.join(", "))
    {
        headers.insert(header::TRAILER, v);
    }
}

/// The `Referer` a browser sends after a query-token login names the page's URL, token
/// included: the token parameter goes, the rest stays.
fn strip_token_from_referer(headers: &mut HeaderMap) {
    if !headers
        .get_all(header::REFERER)
        .iter()
        .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(TOKEN_PARAM))
    {
        return;
    }
    // One Referer is all a browser sends: more than one, or one that is not text, goes.
    let mut values = headers.get_all(header::REFERER).iter();
    let (Some(only), None) = (values.next(), values.next()) else {
        headers.remove(header::REFERER);
        return;
    };
    let Ok(referer) = only.to_str().map(str::to_owned) else {
        headers.remove(header::REFERER);
        return;
    };
    let (rest, fragment) = referer
        .split_once('#')
        .map_or((referer.as_str(), None), |(r, f)| (r, Some(f)));
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && !is_token_param(kv))
        .collect();
    let mut cleaned = base.to_owned();
    if !kept.is_empty() {
        cleaned.push('?');
        cleaned.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment.filter(|f| !f.contains(TOKEN_PARAM)) {
        cleaned.push('#');
        cleaned.push_str(f);
    }
    match HeaderValue::from_str(&cleaned) {
        Ok(v) if !cleaned.contains(TOKEN_PARAM) => {
            headers.insert(header::REFERER, v);
        }
        _ => {
            headers.remove(header::REFERER);
        }
    }
}

/// What the gateway takes away and adds before the workload sees the headers: its own
/// credentials go (the bearer token, the token cookie, the traffic token, the token in a
/// `Referer`), a client's `X-Verified-User-Data` (in any spelling) and forwarding headers go
/// and the token's metadata takes its place, `Host` is masked if asked.
pub fn rewrite_headers(
    headers: &mut HeaderMap,
    source: TokenSource,
    user_data: Option<&HeaderValue>,
    host: Option<HeaderValue>,
) {
    if source == TokenSource::Bearer {
        headers.remove(header::AUTHORIZATION);
    }
    strip_token_from_referer(headers);
    let has_token_cookie = cookies(headers).any(|(k, _)| k == TOKEN_PARAM);
    if has_token_cookie {
        let kept: Vec<String> = cookie_pairs(headers)
            .filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != TOKEN_PARAM)
            .map(str::to_owned)
            .collect();
        headers.remove(header::COOKIE);
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        {
            headers.insert(header::COOKIE, v);
        }
    }
    remove_fields(headers, is_gateway_header);
    if let Some(v) = user_data {
        headers.insert(VERIFIED_USER_DATA, v.clone());
    }
    if let Some(h) = host {
        headers.insert(header::HOST, h);
    }
}

/// What a workload may not tell the client's browser: a `Domain` on its cookies (which
/// would reach sibling sandboxes under `ingress_domain`, or plant a token cookie there) and a
/// service worker scope wider than its own path.
pub fn rewrite_response_headers(headers: &mut HeaderMap) {
    headers.remove("service-worker-allowed");
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| {
            let text = String::from_utf8_lossy(v.as_bytes());
            let kept: Vec<&str> = text
                .split(';')
                .filter(|attr| {
                    let a = attr.trim();
                    !(a.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("domain"))
                        && a[6..].trim_start().starts_with('='))
                })
                .collect();
            HeaderValue::from_str(&kept.join(";")).unwrap_or_else(|_| v.clone())
        })
        .collect();
    if !cookies.is_empty() {
        headers.remove(header::SET_COOKIE);
        for c in cookies {
            headers.append(header::SET_COOKIE, c);
        }
    }
}

/// `mask_host` with `${PORT}` replaced.
pub fn masked_host(template: &str, port: u16) -> String {
    template.replace("${PORT}", &port.to_string())
}

/// The cookie that a token given as a query parameter becomes.
pub fn token_cookie(token: &str, route: &Route, tls: bool) -> String {
    let path = route.prefix.as_deref().unwrap_or("/");
    let secure = if tls { "; Secure" } else { "" };
    format!("{TOKEN_PARAM}={token}; Path={path}; HttpOnly; SameSite=Lax{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn routes_by_host_then_by_path() {
        let h = headers(&[("host", "8080-web.prod.Sandbox.localhost:7480")]);
        let uri: Uri = "/x".parse().unwrap();
        assert_eq!(
            find(&uri, &h, "sandbox.localhost"),
            Some(Route {
                sandbox: "web.prod".into(),
                port: 8080,
                prefix: None
            })
        );
        let h = headers(&[("host", "127.0.0.1:7480")]);
        let uri: Uri = "/_sandbox/abc/3000/api/v1?q=1".parse().unwrap();
        let route = find(&uri, &h, "sandbox.localhost").unwrap();
        assert_eq!(route.sandbox, "abc");
        assert_eq!(route.port, 3000);
        assert_eq!(upstream_path(&uri, &route), "/api/v1?q=1");
        // Neither: no route. Port 0 and a missing sandbox are no routes either.
        for (host, path) in [
            ("example.com", "/"),
            ("0-abc.sandbox.localhost", "/"),
            ("8080-.sandbox.localhost", "/"),
            ("x", "/_sandbox//80/"),
            ("x", "/_sandbox/abc/http/"),
        ] {
            let h = headers(&[("host", host)]);
            assert_eq!(find(&path.parse().unwrap(), &h, "sandbox.localhost"), None);
        }
        // An HTTP/2 authority in the URI counts as the host.
        let uri: Uri = "https://9000-abc.sandbox.localhost/".parse().unwrap();
        assert_eq!(
            find(&uri, &HeaderMap::new(), "sandbox.localhost").map(|r| r.port),
            Some(9000)
        );
    }

    #[test]
    fn tokens_come_from_bearer_query_or_cookie() {
        let route = Route {
            sandbox: "s".into(),
            port: 1,
            prefix: None,
        };
        let uri: Uri = "/p?a=1&_sandbox_connect_token=q1".parse().unwrap();
        let h = headers(&[
            ("authorization", "BEARER b1"),
            ("cookie", "x=1; _sandbox_connect_token=c1"),
        ]);
        assert_eq!(
            token(&uri, &h, &route),
            Some(("b1".into(), TokenSource::Bearer))
        );
        let h = headers(&[("cookie", "x=1; _sandbox_connect_token=c1")]);
        assert_eq!(
            token(&uri, &h, &route),
            Some(("q1".into(), TokenSource::Query))
        );
        let plain: Uri = "/p".parse().unwrap();
        assert_eq!(
            token(&plain, &h, &route),
            Some(("c1".into(), TokenSource::Cookie))
        );
        assert_eq!(
            token(&plain, &headers(&[("authorization", "Basic eA==")]), &route),
            None
        );
        assert_eq!(upstream_path(&uri, &route), "/p?a=1");
        // Other parameters stay exactly as sent.
        let signed: Uri = "/p?b=&&a=1&_sandbox_connect_token=q1&sig=x%2F"
            .parse()
            .unwrap();
        assert_eq!(upstream_path(&signed, &route), "/p?b=&&a=1&sig=x%2F");
        // Routes by path take the bearer header only (one origin for every sandbox).
        let by_path = Route {
            prefix: Some("/_sandbox/s/1".into()),
            ..route
        };
        assert_eq!(token(&uri, &h, &by_path), None);
        let bearer = headers(&[("authorization", "Bearer b2")]);
        assert_eq!(
            token(&uri, &bearer, &by_path),
            Some(("b2".into(), TokenSource::Bearer))
        );
    }

    #[test]
    fn the_gateway_strips_its_credentials_and_forged_identity() {
        let mut h = headers(&[
            ("authorization", "Bearer b1"),
            ("cookie", "_sandbox_connect_token=c1; theirs=2; bare"),
            ("x-verified-user-data", "{\"forged\":true}"),
            ("x-verified-user_data", "{\"forged\":2}"),
            ("forwarded", "for=1.2.3.4"),
            ("x-sandbox-traffic-token", "t"),
            ("host", "8080-s.sandbox.localhost"),
        ]);
        let data = HeaderValue::from_static("{\"user\":\"ann\"}");
        rewrite_headers(
            &mut h,
            TokenSource::Bearer,
            Some(&data),
            Some(HeaderValue::from_static("localhost:8080")),
        );
        assert!(h.get("authorization").is_none());
        assert_eq!(h.get("cookie").unwrap(), "theirs=2; bare");
        assert!(h.get("x-verified-user_data").is_none());
        assert!(h.get("forwarded").is_none());
        assert_eq!(h.get_all("x-verified-user-data").iter().count(), 1);
        assert_eq!(h.get("x-verified-user-data").unwrap(), "{\"user\":\"ann\"}");
        assert!(h.get("x-sandbox-traffic-token").is_none());
        assert_eq!(h.get("host").unwrap(), "localhost:8080");
        // Without metadata, no header at all (a forged one is still removed); the
        // workload's own Authorization stays when the token came another way.
        let mut h = headers(&[
            ("authorization", "Basic eA=="),
            ("x-verified-user-data", "forged"),
        ]);
        rewrite_headers(&mut h, TokenSource::Cookie, None, None);
        assert!(h.get("x-verified-user-data").is_none());
        assert_eq!(h.get("authorization").unwrap(), "Basic eA==");
        assert_eq!(masked_host("localhost:${PORT}", 8080), "localhost:8080");
    }

    #[test]
    fn the_token_leaves_the_referer_and_gateway_fields_cannot_be_trailers() {
        for (sent, kept) in [
            (
                "http://8080-s.sandbox.localhost/p?_sandbox_connect_token=sat_x&y=2#top",
                Some("http://8080-s.sandbox.localhost/p?y=2#top"),
            ),
            (
                "http://8080-s.sandbox.localhost/p?_sandbox_connect_token=sat_x",
                Some("http://8080-s.sandbox.localhost/p"),
            ),
            // The token anywhere else: no Referer at all.
            (
                "http://h/p#_sandbox_connect_token=sat_x",
                Some("http://h/p"),
            ),
            ("http://h/p?a=1", Some("http://h/p?a=1")),
        ] {
            let mut h = headers(&[("referer", sent)]);
            rewrite_headers(&mut h, TokenSource::Cookie, None, None);
            assert_eq!(
                h.get("referer").map(|v| v.to_str().unwrap()),
                kept,
                "{sent}"
            );
        }
        // Two Referers (no browser sends that), one with the token: none goes on.
        let mut h = headers(&[
            ("referer", "http://a/"),
            ("referer", "http://h/?_sandbox_connect_token=sat_x"),
        ]);
        rewrite_headers(&mut h, TokenSource::Cookie, None, None);
        assert!(h.get("referer").is_none());
        let mut h = headers(&[(
            "trailer",
            "X-Verified-User-Data, x-checksum, Host, x_forwarded_for, transfer-encoding",
        )]);
        restrict_trailer_declaration(&mut h);
        assert_eq!(h.get("trailer").unwrap(), "x-checksum");
        let mut h = headers(&[("trailer", "x-verified-user-data")]);
        restrict_trailer_declaration(&mut h);
        assert!(h.get("trailer").is_none());
        for owned in [
            "host",
            "X-Verified-User-Data",
            "x-forwarded-proto",
            "X-Real-IP",
        ] {
            assert!(is_gateway_owned(owned), "{owned}");
            assert!(!trailer_allowed(owned), "{owned}");
        }
        assert!(trailer_allowed("x-checksum"));
        assert!(!is_gateway_owned("cookie"));
    }

    #[test]
    fn workloads_cannot_scope_cookies_or_workers_beyond_their_origin() {
        let mut h = headers(&[
            ("set-cookie", "a=1; Domain=sandbox.localhost; Path=/"),
            ("set-cookie", "b=2; HttpOnly"),
            ("service-worker-allowed", "/"),
        ]);
        rewrite_response_headers(&mut h);
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; HttpOnly"]);
        assert!(h.get("service-worker-allowed").is_none());
    }

    #[test]
    fn a_path_route_strips_exactly_what_it_matched() {
        for path in [
            "/_sandbox/a/+8080/x",
            "/_sandbox/a/08080/x",
            "/_sandbox/a/-1/x",
        ] {
            assert_eq!(by_path(path), None, "{path}");
        }
        let r = by_path("/_sandbox/a/8080").unwrap();
        assert_eq!(upstream_path(&"/_sandbox/a/8080".parse().unwrap(), &r), "/");
    }
}
