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
    let port = parts.next()?.parse().ok().filter(|p| *p != 0)?;
    Some(Route {
        sandbox: sandbox.to_owned(),
        port,
        prefix: Some(format!("{PATH_PREFIX}{sandbox}/{port}")),
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
/// the cookie.
pub fn token(uri: &Uri, headers: &HeaderMap) -> Option<(String, TokenSource)> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some((t.to_owned(), TokenSource::Bearer));
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
    headers
        .get_all(header::COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
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
    let query: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split_once('=').map_or(*kv, |(k, _)| k) != TOKEN_PARAM)
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// What the gateway takes away and adds before the workload sees the headers: its own
/// credentials go (the bearer token, the token cookie, the traffic token), a client's
/// `X-Verified-User-Data` goes and the token's metadata takes its place, `Host` is masked
/// if asked.
pub fn rewrite_headers(
    headers: &mut HeaderMap,
    source: TokenSource,
    user_data: Option<&HeaderValue>,
    host: Option<HeaderValue>,
) {
    if source == TokenSource::Bearer {
        headers.remove(header::AUTHORIZATION);
    }
    let kept: Vec<String> = cookies(headers)
        .filter(|(k, _)| *k != TOKEN_PARAM)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
    headers.remove(TRAFFIC_TOKEN);
    headers.remove(VERIFIED_USER_DATA);
    if let Some(v) = user_data {
        headers.insert(VERIFIED_USER_DATA, v.clone());
    }
    if let Some(h) = host {
        headers.insert(header::HOST, h);
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
        let uri: Uri = "/p?a=1&_sandbox_connect_token=q1".parse().unwrap();
        let h = headers(&[
            ("authorization", "Bearer b1"),
            ("cookie", "x=1; _sandbox_connect_token=c1"),
        ]);
        assert_eq!(token(&uri, &h), Some(("b1".into(), TokenSource::Bearer)));
        let h = headers(&[("cookie", "x=1; _sandbox_connect_token=c1")]);
        assert_eq!(token(&uri, &h), Some(("q1".into(), TokenSource::Query)));
        let plain: Uri = "/p".parse().unwrap();
        assert_eq!(token(&plain, &h), Some(("c1".into(), TokenSource::Cookie)));
        assert_eq!(
            token(&plain, &headers(&[("authorization", "Basic eA==")])),
            None
        );
        let route = Route {
            sandbox: "s".into(),
            port: 1,
            prefix: None,
        };
        assert_eq!(upstream_path(&uri, &route), "/p?a=1");
    }

    #[test]
    fn the_gateway_strips_its_credentials_and_forged_identity() {
        let mut h = headers(&[
            ("authorization", "Bearer b1"),
            ("cookie", "_sandbox_connect_token=c1; theirs=2"),
            ("x-verified-user-data", "{\"forged\":true}"),
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
        assert_eq!(h.get("cookie").unwrap(), "theirs=2");
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
}
