//! DNS messages: parse queries, build refusals, filter upstream answers.
//!
//! Pure functions over wire bytes (no I/O), built on `hickory-proto`. The choices, in one place:
//!
//! - **Nothing of the sandbox's bytes goes upstream** but the policy-approved name (lower-cased:
//!   0x20 case patterns could carry data), its type and class. The upstream query is rebuilt from
//!   scratch: fresh id, RD, one question, an OPT record advertising [`UDP_PAYLOAD`] with no options
//!   and no DO bit.
//! - **Queries the agent will not forward**: anything but one question with opcode QUERY, class IN,
//!   a name that passes [`crate::policy::normalize_name`], a non-meta type, EDNS version 0. Each
//!   [`QueryError`] maps to the rcode to answer with ([`QueryError::rcode`], [`error_response`]).
//! - **EDNS towards the sandbox** is mirrored: if it sent an OPT record, every response carries
//!   the agent's own (payload [`UDP_PAYLOAD`], version 0, no options except an Extended DNS Error
//!   "Blocked" in [`refused`]); without one, no OPT and the classic 512-byte limit.
//! - **Upstream answers**: the sandbox's id and question (its own letter case), the upstream's
//!   answer and authority records (minus stray OPT records), `ech` removed from HTTPS/SVCB. The
//!   additional section is dropped entirely: glue and SVCB address hints would hand the sandbox
//!   addresses of names it never asked about, which the policy never recorded; stub resolvers
//!   do not need them and can ask for those names, through the policy. AA and AD are cleared
//!   (the agent is neither authoritative nor validating, and it edits HTTPS records).
//! - **Upstream TC**: [`ResponseError::Truncated`]; the caller retries upstream over TCP.
//! - **Too big for the sandbox**: authority records of a positive answer are dropped first (extra
//!   data, RFC 2181 §9: no TC needed); if still too big, all records go and TC is set so the
//!   sandbox retries over TCP.

use std::net::IpAddr;

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::HTTPS;
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::svcb::{Mandatory, SVCB, SvcParamKey, SvcParamValue};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::policy::normalize_name;

/// The UDP payload size the agent advertises, and the most it answers with over UDP whatever the
/// sandbox advertises: the DNS Flag Day 2020 value, which avoids IP fragmentation.
pub const UDP_PAYLOAD: u16 = 1232;
/// The UDP size limit for a client that sent no OPT record (RFC 1035).
pub const CLASSIC_UDP_SIZE: usize = 512;
/// The size limit over TCP, where a 2-byte length prefixes each message.
pub const TCP_MAX_SIZE: usize = 65535;

/// Extended DNS Error option code (RFC 8914).
const EDE_OPTION: u16 = 15;
/// EDE info-code 15, "Blocked": refused by the operator's policy.
const EDE_BLOCKED: u16 = 15;
const EDE_BLOCKED_TEXT: &str = "denied by the sandbox network policy";

/// A query from a sandbox, reduced to what the policy decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Normalised with [`crate::policy::normalize_name`] (lower-case, no trailing dot). This, and
    /// only this, is what goes upstream.
    pub name: String,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    /// The sandbox's RD bit, echoed in responses.
    pub recursion_desired: bool,
    /// The UDP payload size the sandbox advertised in its OPT record; `None` if it sent none (then
    /// responses carry no OPT record either).
    pub edns_payload: Option<u16>,
    /// The question name exactly as the sandbox sent it. Echoed in responses, whose question must
    /// be a copy of the query's (resolvers using 0x20 case randomisation check it); never sent
    /// upstream.
    pub wire_name: Name,
}

impl Question {
    /// The largest response the sandbox takes over UDP: 512 bytes without EDNS, else its
    /// advertised size capped at [`UDP_PAYLOAD`]. (Over TCP use [`TCP_MAX_SIZE`].)
    pub fn max_udp_size(&self) -> usize {
        self.edns_payload.map_or(CLASSIC_UDP_SIZE, |payload| {
            // Values below 512 mean 512 (RFC 6891 §6.2.5).
            usize::from(payload.clamp(512, UDP_PAYLOAD))
        })
    }
}

/// Why bytes from a sandbox are not a query the agent forwards.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("not a parsable DNS message")]
    Unparsable(#[source] ProtoError),
    #[error("a response (QR set), not a query")]
    NotAQuery,
    #[error("opcode {0} is not supported (only QUERY)")]
    NotStandardQuery(OpCode),
    #[error("{0} questions (exactly one is supported)")]
    QuestionCount(usize),
    #[error("not an acceptable domain name: {0:?}")]
    BadName(String),
    #[error("class {0} is not supported (only IN)")]
    UnsupportedClass(DNSClass),
    #[error("query type {0} is not supported")]
    UnsupportedType(RecordType),
    #[error("EDNS version {0} is not supported (only 0)")]
    BadEdnsVersion(u8),
}

impl QueryError {
    /// The rcode to answer with (through [`error_response`]); `None`: send nothing back.
    pub fn rcode(&self) -> Option<ResponseCode> {
        match self {
            // Answering a response could start an endless exchange of errors.
            Self::NotAQuery => None,
            Self::Unparsable(_) | Self::QuestionCount(_) => Some(ResponseCode::FormErr),
            Self::NotStandardQuery(_) => Some(ResponseCode::NotImp),
            // Well-formed, but the agent will not ask for it.
            Self::BadName(_) | Self::UnsupportedClass(_) | Self::UnsupportedType(_) => {
                Some(ResponseCode::Refused)
            }
            Self::BadEdnsVersion(_) => Some(ResponseCode::BADVERS),
        }
    }
}

/// Parses a sandbox's query. Exactly one question, opcode QUERY, QR=0, class IN, not a meta type
/// (zone transfers, OPT, TSIG...), EDNS version 0 if any; the name must pass
/// [`crate::policy::normalize_name`].
pub fn parse_query(bytes: &[u8]) -> Result<Question, QueryError> {
    let message = parse_message(bytes).map_err(QueryError::Unparsable)?;
    if message.message_type() != MessageType::Query {
        return Err(QueryError::NotAQuery);
    }
    if message.op_code() != OpCode::Query {
        return Err(QueryError::NotStandardQuery(message.op_code()));
    }
    let [query] = message.queries() else {
        return Err(QueryError::QuestionCount(message.queries().len()));
    };
    if let Some(edns) = message.extensions()
        && edns.version() != 0
    {
        return Err(QueryError::BadEdnsVersion(edns.version()));
    }
    if query.query_class() != DNSClass::IN {
        return Err(QueryError::UnsupportedClass(query.query_class()));
    }
    if is_meta_type(query.query_type()) {
        return Err(QueryError::UnsupportedType(query.query_type()));
    }
    let name = name_text(query.name())
        .and_then(|text| normalize_name(&text))
        .ok_or_else(|| QueryError::BadName(query.name().to_ascii()))?;
    Ok(Question {
        id: message.id(),
        name,
        qtype: query.query_type(),
        qclass: query.query_class(),
        recursion_desired: message.recursion_desired(),
        edns_payload: message.extensions().as_ref().map(Edns::max_payload),
        wire_name: query.name().clone(),
    })
}

/// The query the agent sends upstream, rebuilt from the question only: `upstream_id`, RD, one
/// question (the normalised name), an OPT record advertising [`UDP_PAYLOAD`] bytes with no
/// options. Nothing else of the sandbox's bytes is forwarded: EDNS options, additional records,
/// odd flags or letter case could carry data out.
///
/// `q.name` is normalised again, so that questions built by hand (not by [`parse_query`]) may
/// have a trailing dot or upper case.
///
/// # Panics
/// If `q.name` fails [`crate::policy::normalize_name`]: there is no query to send for it.
pub fn upstream_query(q: &Question, upstream_id: u16) -> Vec<u8> {
    let name = normalize_name(&q.name)
        .and_then(|text| Name::from_labels(text.split('.').map(str::as_bytes)).ok())
        .unwrap_or_else(|| panic!("not a domain name to ask upstream: {:?}", q.name));
    let mut query = Query::query(name, q.qtype);
    query.set_query_class(q.qclass);
    let mut message = Message::new();
    message
        .set_id(upstream_id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(query)
        .set_edns(agent_edns());
    message
        .to_vec()
        .expect("one question and an empty OPT record always encode")
}

/// REFUSED for a name the policy denies: id, question and RD echoed, no records; with an Extended
/// DNS Error "Blocked" if the sandbox speaks EDNS, so that tools like dig show why.
pub fn refused(q: &Question) -> Vec<u8> {
    let mut message = response_to(q, ResponseCode::Refused);
    if let Some(edns) = message.extensions_mut() {
        let mut info = EDE_BLOCKED.to_be_bytes().to_vec();
        info.extend_from_slice(EDE_BLOCKED_TEXT.as_bytes());
        edns.options_mut()
            .insert(EdnsOption::Unknown(EDE_OPTION, info));
    }
    encode_or_header(&message)
}

/// SERVFAIL (upstream unreachable or its answer unusable).
pub fn servfail(q: &Question) -> Vec<u8> {
    encode_or_header(&response_to(q, ResponseCode::ServFail))
}

/// FORMERR for bytes that are not a usable query, if at least the 12-byte header is there (id
/// echoed). `None` if the header is missing or has QR set: a response is never answered, as two
/// servers could otherwise bounce errors at each other forever.
pub fn formerr(bytes: &[u8]) -> Option<Vec<u8>> {
    error_response(bytes, ResponseCode::FormErr)
}

/// An error response with `rcode` to whatever the sandbox sent (see [`QueryError::rcode`]): its
/// id, opcode and RD bit from the header, its question if the message parses with exactly one,
/// an OPT record if it sent one or if the rcode needs one (BADVERS). `None` as for [`formerr`].
pub fn error_response(bytes: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    let header = bytes.get(..12)?;
    if header[2] & 0x80 != 0 {
        return None;
    }
    let mut message = Message::new();
    message
        .set_id(u16::from_be_bytes([header[0], header[1]]))
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::from_u8((header[2] >> 3) & 0x0f))
        .set_recursion_desired(header[2] & 0x01 != 0)
        .set_recursion_available(true)
        .set_response_code(rcode);
    if let Ok(request) = parse_message(bytes) {
        if let [query] = request.queries() {
            message.add_query(query.clone());
        }
        if request.extensions().is_some() {
            message.set_edns(agent_edns());
        }
    }
    if rcode.high() > 0 && message.extensions().is_none() {
        message.set_edns(agent_edns());
    }
    Some(encode_or_header(&message))
}

/// An upstream answer made fit for the sandbox.
#[derive(Debug)]
pub struct Filtered {
    /// The response to send to the sandbox: its id and question, the upstream's rcode (FORMERR and
    /// exotic codes become SERVFAIL) and answer/authority records, `ech` removed from HTTPS/SVCB
    /// records, no additional records but the agent's OPT when the sandbox sent one.
    pub bytes: Vec<u8>,
    /// A and AAAA addresses of the question's name, reached through the answer section's CNAME
    /// chain (records of other owner names are not addresses of the asked name), each with the
    /// smallest TTL along its chain. Only addresses present in `bytes`: empty if `truncated`.
    pub addresses: Vec<(IpAddr, u32)>,
    /// The CNAME targets followed, in order (for logs).
    pub cnames: Vec<String>,
    /// How many ECH parameters were removed.
    pub ech_removed: usize,
    /// The response did not fit the sandbox's size: TC is set and it holds no records.
    pub truncated: bool,
    /// Addresses of the question's name left out, past the per-answer cap.
    pub addresses_cut: usize,
}

/// Why an upstream answer cannot be used; the caller answers the sandbox with [`servfail`],
/// except for [`Truncated`](Self::Truncated).
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("upstream answer is not a parsable DNS message")]
    Unparsable(#[source] ProtoError),
    #[error("upstream message is not a response to a standard query")]
    NotAResponse,
    #[error("upstream answer has id {got}, expected {expected}")]
    IdMismatch { expected: u16, got: u16 },
    #[error("upstream answer is for another question")]
    QuestionMismatch,
    /// TC was set upstream: retry the same query upstream over TCP.
    #[error("upstream answer is truncated (retry over TCP)")]
    Truncated,
    #[error("cannot encode the filtered answer")]
    Encode(#[source] ProtoError),
}

/// Checks that `upstream` answers `upstream_query(q, upstream_id)` (id, QR, opcode, question
/// name/type/class case-insensitively) and builds the sandbox's response. `max_size`: what the
/// sandbox takes ([`Question::max_udp_size`] over UDP, [`TCP_MAX_SIZE`] over TCP); a response
/// that does not fit loses its records and gets TC so that the sandbox retries over TCP.
/// `max_addresses`: the question's addresses passed on (the resolver learns each one it
/// passes); A/AAAA records past it are left out and counted in [`Filtered::addresses_cut`].
pub fn filter_response(
    q: &Question,
    upstream_id: u16,
    upstream: &[u8],
    max_size: usize,
    max_addresses: usize,
) -> Result<Filtered, ResponseError> {
    let message = parse_message(upstream).map_err(ResponseError::Unparsable)?;
    if message.message_type() != MessageType::Response || message.op_code() != OpCode::Query {
        return Err(ResponseError::NotAResponse);
    }
    if message.id() != upstream_id {
        return Err(ResponseError::IdMismatch {
            expected: upstream_id,
            got: message.id(),
        });
    }
    let [asked] = message.queries() else {
        return Err(ResponseError::QuestionMismatch);
    };
    // Compared as upstream_query wrote it; case-insensitively, as upstreams may use 0x20.
    let expected = normalize_name(&q.name);
    let same_name = expected.is_some()
        && name_text(asked.name()).and_then(|text| normalize_name(&text)) == expected;
    if !same_name || asked.query_type() != q.qtype || asked.query_class() != q.qclass {
        return Err(ResponseError::QuestionMismatch);
    }
    // Checked after id and question, so that only a genuine answer triggers a TCP retry.
    if message.truncated() {
        return Err(ResponseError::Truncated);
    }

    let qname = asked.name().clone();
    let rcode = sandbox_rcode(message.response_code());
    let parts = message.into_parts();
    let mut answers = without_opt(parts.answers);
    let mut authority = without_opt(parts.name_servers);
    let ech_removed = strip_ech(&mut answers) + strip_ech(&mut authority);
    let (mut addresses, cnames) = follow_chain(&qname, &answers);
    let addresses_cut = addresses.len().saturating_sub(max_addresses);
    if addresses_cut > 0 {
        let cut: std::collections::HashSet<IpAddr> =
            addresses.drain(max_addresses..).map(|(a, _)| a).collect();
        let kept: std::collections::HashSet<IpAddr> = addresses.iter().map(|(a, _)| *a).collect();
        answers.retain(|record| match record.data() {
            RData::A(a) => !cut.contains(&IpAddr::V4(a.0)) || kept.contains(&IpAddr::V4(a.0)),
            RData::AAAA(a) => !cut.contains(&IpAddr::V6(a.0)) || kept.contains(&IpAddr::V6(a.0)),
            _ => true,
        });
    }

    let mut response = response_to(q, rcode);
    response.add_answers(answers).add_name_servers(authority);
    let (bytes, truncated) = fit(response, max_size).map_err(ResponseError::Encode)?;
    Ok(Filtered {
        bytes,
        addresses: if truncated { Vec::new() } else { addresses },
        cnames,
        ech_removed,
        truncated,
        addresses_cut,
    })
}

/// Parses a message, first rejecting headers whose record counts the bytes cannot hold: hickory
/// allocates for the announced counts before reading them.
fn parse_message(bytes: &[u8]) -> Result<Message, ProtoError> {
    let Some(header) = bytes.get(..12) else {
        return Err("shorter than a DNS header".into());
    };
    let count = |at: usize| usize::from(u16::from_be_bytes([header[at], header[at + 1]]));
    // A question takes at least 5 bytes (root name, type, class), a record at least 11.
    let least = count(4) * 5 + (count(6) + count(8) + count(10)) * 11;
    if least > bytes.len() - 12 {
        return Err("record counts exceed the message length".into());
    }
    Message::from_vec(bytes)
}

/// Types that are not data a name can have (RFC 6895 §3.1: 0, OPT, 128-255 save ANY).
fn is_meta_type(qtype: RecordType) -> bool {
    let code = u16::from(qtype);
    code == 0 || qtype == RecordType::OPT || (128..=254).contains(&code)
}

/// A name's labels joined with dots, if they are UTF-8 without dots (then
/// [`crate::policy::normalize_name`] decides on the rest). The root gives "".
fn name_text(name: &Name) -> Option<String> {
    let mut text = String::with_capacity(name.len());
    for label in name {
        let label = std::str::from_utf8(label).ok()?;
        if label.contains('.') {
            return None;
        }
        if !text.is_empty() {
            text.push('.');
        }
        text.push_str(label);
    }
    Some(text)
}

/// A name for logs: lower-case, escaped where needed, no trailing dot.
fn display_name(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// The agent's OPT record: what it can receive, nothing else.
fn agent_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD)
        .set_version(0)
        .set_dnssec_ok(false);
    edns
}

/// A response to `q` with no records: its id, question and RD, and an OPT record if it sent one.
fn response_to(q: &Question, rcode: ResponseCode) -> Message {
    let mut query = Query::query(q.wire_name.clone(), q.qtype);
    query.set_query_class(q.qclass);
    let mut message = Message::new();
    message
        .set_id(q.id)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(q.recursion_desired)
        .set_recursion_available(true)
        .set_response_code(rcode)
        .add_query(query);
    if q.edns_payload.is_some() {
        message.set_edns(agent_edns());
    }
    message
}

/// Encodes a message; should that fail, its bare header, so that the sandbox still gets an answer.
fn encode_or_header(message: &Message) -> Vec<u8> {
    message.to_vec().unwrap_or_else(|_| {
        let mut bare = Message::new();
        bare.set_header(*message.header());
        bare.to_vec().unwrap_or_default()
    })
}

/// The rcode the sandbox sees for an upstream rcode.
fn sandbox_rcode(upstream: ResponseCode) -> ResponseCode {
    match upstream {
        ResponseCode::NoError
        | ResponseCode::NXDomain
        | ResponseCode::ServFail
        | ResponseCode::NotImp
        | ResponseCode::Refused => upstream,
        // FORMERR would blame the sandbox for the agent's query; the others (update, TSIG,
        // cookie, EDNS codes) answer nothing the agent asked.
        _ => ResponseCode::ServFail,
    }
}

/// Drops OPT records, which only belong in the additional section.
fn without_opt(records: Vec<Record>) -> Vec<Record> {
    records
        .into_iter()
        .filter(|record| record.record_type() != RecordType::OPT)
        .collect()
}

/// Removes the `ech` `SvcParam` from HTTPS and SVCB records, so that TLS clients send their real
/// SNI, which egress filtering reads. Returns how many were removed.
fn strip_ech(records: &mut [Record]) -> usize {
    let mut removed = 0;
    for record in records {
        let data = record.data_mut();
        match data {
            RData::HTTPS(HTTPS(svcb)) => {
                if let Some((stripped, count)) = without_ech(svcb) {
                    *data = RData::HTTPS(HTTPS(stripped));
                    removed += count;
                }
            }
            RData::SVCB(svcb) => {
                if let Some((stripped, count)) = without_ech(svcb) {
                    *data = RData::SVCB(stripped);
                    removed += count;
                }
            }
            _ => {}
        }
    }
    removed
}

/// `svcb` without its `ech` params (and without `ech` in its `mandatory` list, which would make
/// clients discard the record), and how many were removed; `None` if it has none.
fn without_ech(svcb: &SVCB) -> Option<(SVCB, usize)> {
    let removed = svcb
        .svc_params()
        .iter()
        .filter(|(key, _)| *key == SvcParamKey::EchConfigList)
        .count();
    if removed == 0 {
        return None;
    }
    let params = svcb
        .svc_params()
        .iter()
        .filter_map(|(key, value)| match (key, value) {
            (SvcParamKey::EchConfigList, _) => None,
            (SvcParamKey::Mandatory, SvcParamValue::Mandatory(Mandatory(keys))) => {
                let keys: Vec<SvcParamKey> = keys
                    .iter()
                    .copied()
                    .filter(|key| *key != SvcParamKey::EchConfigList)
                    .collect();
                // An empty mandatory list is malformed: drop the param instead.
                if keys.is_empty() {
                    None
                } else {
                    Some((*key, SvcParamValue::Mandatory(Mandatory(keys))))
                }
            }
            _ => Some((*key, value.clone())),
        })
        .collect();
    let stripped = SVCB::new(svcb.svc_priority(), svcb.target_name().clone(), params);
    Some((stripped, removed))
}

/// A TTL as caches read it: with the top bit set it means 0 (RFC 2181 §8).
fn ttl_of(record: &Record) -> u32 {
    if record.ttl() > 0x7fff_ffff {
        0
    } else {
        record.ttl()
    }
}

/// Follows the CNAME chain from `qname` through `answers`; returns the A/AAAA addresses of the
/// chain's last name, each with the smallest TTL along the chain, and the CNAME targets. A chain
/// that loops yields no address.
fn follow_chain(qname: &Name, answers: &[Record]) -> (Vec<(IpAddr, u32)>, Vec<String>) {
    let mut current = qname.clone();
    let mut visited = vec![qname.clone()];
    let mut chain_ttl = u32::MAX;
    let mut cnames = Vec::new();
    loop {
        let next = answers.iter().find_map(|record| match record.data() {
            RData::CNAME(target)
                if record.dns_class() == DNSClass::IN && record.name().eq_ignore_root(&current) =>
            {
                Some((target.0.clone(), ttl_of(record)))
            }
            _ => None,
        });
        let Some((target, ttl)) = next else {
            break;
        };
        cnames.push(display_name(&target));
        if visited.iter().any(|seen| seen.eq_ignore_root(&target)) {
            return (Vec::new(), cnames);
        }
        chain_ttl = chain_ttl.min(ttl);
        visited.push(target.clone());
        current = target;
    }
    let addresses = answers
        .iter()
        .filter(|record| {
            record.dns_class() == DNSClass::IN && record.name().eq_ignore_root(&current)
        })
        .filter_map(|record| {
            let address = match record.data() {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => return None,
            };
            Some((address, chain_ttl.min(ttl_of(record))))
        })
        .collect();
    (addresses, cnames)
}

/// Encodes `message` within `max_size` bytes if it can; returns the bytes and whether TC was set.
fn fit(mut message: Message, max_size: usize) -> Result<(Vec<u8>, bool), ProtoError> {
    let bytes = message.to_vec()?;
    if bytes.len() <= max_size {
        return Ok((bytes, false));
    }
    // The authority section of a positive answer is extra data: dropping it needs no TC.
    if message.response_code() == ResponseCode::NoError
        && !message.answers().is_empty()
        && !message.name_servers().is_empty()
    {
        message.take_name_servers();
        let bytes = message.to_vec()?;
        if bytes.len() <= max_size {
            return Ok((bytes, false));
        }
    }
    // A partial answer would be used as if whole: send none, and TC for a retry over TCP.
    message.take_answers();
    message.take_name_servers();
    message.set_truncated(true);
    let bytes = message.to_vec()?;
    if bytes.len() <= max_size {
        return Ok((bytes, true));
    }
    // Only a limit below 512 bytes gets here; the header and question are the floor.
    message.extensions_mut().take();
    Ok((message.to_vec()?, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::rr::rdata::opt::EdnsCode;
    use hickory_proto::rr::rdata::svcb::{Alpn, EchConfigList, IpHint};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, TXT};

    const SANDBOX_ID: u16 = 0x1234;
    const UPSTREAM_ID: u16 = 0xbeef;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn query_message(qname: &str, qtype: RecordType) -> Message {
        let mut message = Message::new();
        message
            .set_id(SANDBOX_ID)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name(qname), qtype));
        message
    }

    fn query_bytes(qname: &str, qtype: RecordType) -> Vec<u8> {
        query_message(qname, qtype).to_vec().unwrap()
    }

    fn question(qname: &str, qtype: RecordType) -> Question {
        parse_query(&query_bytes(qname, qtype)).unwrap()
    }

    fn record(owner: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(name(owner), ttl, data)
    }

    fn a(owner: &str, ttl: u32, address: [u8; 4]) -> Record {
        record(owner, ttl, RData::A(A(Ipv4Addr::from(address))))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        record(owner, ttl, RData::CNAME(CNAME(name(target))))
    }

    /// What an upstream resolver would send back to `upstream_query(q, UPSTREAM_ID)`.
    fn upstream_reply(q: &Question, answers: Vec<Record>) -> Message {
        let mut message = Message::from_vec(&upstream_query(q, UPSTREAM_ID)).unwrap();
        message
            .set_message_type(MessageType::Response)
            .set_recursion_available(true)
            .add_answers(answers);
        message
    }

    fn filter(q: &Question, reply: &Message) -> Result<Filtered, ResponseError> {
        filter_response(
            q,
            UPSTREAM_ID,
            &reply.to_vec().unwrap(),
            q.max_udp_size(),
            usize::MAX,
        )
    }

    fn https_record(owner: &str, params: Vec<(SvcParamKey, SvcParamValue)>) -> Record {
        let svcb = SVCB::new(1, Name::root(), params);
        record(owner, 300, RData::HTTPS(HTTPS(svcb)))
    }

    fn svc_params(record: &Record) -> Vec<(SvcParamKey, SvcParamValue)> {
        match record.data() {
            RData::HTTPS(HTTPS(svcb)) | RData::SVCB(svcb) => svcb.svc_params().to_vec(),
            other => panic!("not an HTTPS/SVCB record: {other:?}"),
        }
    }

    #[test]
    fn parses_a_query_and_normalises_its_name() {
        let q = parse_query(&query_bytes("WWW.Example.COM.", RecordType::A)).unwrap();
        assert_eq!(q.id, SANDBOX_ID);
        assert_eq!(q.name, "www.example.com");
        assert_eq!(q.qtype, RecordType::A);
        assert_eq!(q.qclass, DNSClass::IN);
        assert!(q.recursion_desired);
        assert_eq!(q.edns_payload, None);
        assert!(q.wire_name.eq_ignore_root_case(&name("WWW.Example.COM.")));
        assert_eq!(q.max_udp_size(), 512);
    }

    #[test]
    fn parses_aaaa_txt_and_https_queries() {
        for qtype in [
            RecordType::AAAA,
            RecordType::TXT,
            RecordType::HTTPS,
            RecordType::SVCB,
        ] {
            let q = parse_query(&query_bytes("api.example.org", qtype)).unwrap();
            assert_eq!((q.name.as_str(), q.qtype), ("api.example.org", qtype));
        }
        let q = parse_query(&query_bytes("_acme-challenge.example.org", RecordType::TXT)).unwrap();
        assert_eq!(q.name, "_acme-challenge.example.org");
    }

    #[test]
    fn records_edns_and_caps_the_udp_size() {
        for (advertised, expected) in [(4096, 1232), (1232, 1232), (1400, 1232), (600, 600)] {
            let mut message = query_message("example.com", RecordType::A);
            let mut edns = Edns::new();
            edns.set_max_payload(advertised);
            message.set_edns(edns).set_recursion_desired(false);
            let q = parse_query(&message.to_vec().unwrap()).unwrap();
            assert_eq!(q.edns_payload, Some(advertised));
            assert!(!q.recursion_desired);
            assert_eq!(q.max_udp_size(), expected);
        }
    }

    #[test]
    fn rejects_other_than_one_question() {
        let mut two = query_message("example.com", RecordType::A);
        two.add_query(Query::query(name("example.org"), RecordType::A));
        let err = parse_query(&two.to_vec().unwrap()).unwrap_err();
        assert!(matches!(err, QueryError::QuestionCount(2)), "{err}");
        assert_eq!(err.rcode(), Some(ResponseCode::FormErr));

        let mut none = Message::new();
        none.set_id(SANDBOX_ID);
        let err = parse_query(&none.to_vec().unwrap()).unwrap_err();
        assert!(matches!(err, QueryError::QuestionCount(0)), "{err}");
    }

    #[test]
    fn rejects_a_response_and_never_answers_it() {
        let mut message = query_message("example.com", RecordType::A);
        message.set_message_type(MessageType::Response);
        let bytes = message.to_vec().unwrap();
        let err = parse_query(&bytes).unwrap_err();
        assert!(matches!(err, QueryError::NotAQuery), "{err}");
        assert_eq!(err.rcode(), None);
        assert_eq!(formerr(&bytes), None);
        assert_eq!(error_response(&bytes, ResponseCode::Refused), None);
    }

    #[test]
    fn rejects_notify_and_update_with_notimp() {
        for op_code in [OpCode::Notify, OpCode::Update, OpCode::Status] {
            let mut message = query_message("example.com", RecordType::SOA);
            message.set_op_code(op_code);
            let bytes = message.to_vec().unwrap();
            let err = parse_query(&bytes).unwrap_err();
            assert!(
                matches!(err, QueryError::NotStandardQuery(op) if op == op_code),
                "{err}"
            );
            assert_eq!(err.rcode(), Some(ResponseCode::NotImp));

            let reply = Message::from_vec(&error_response(&bytes, ResponseCode::NotImp).unwrap());
            let reply = reply.unwrap();
            assert_eq!(reply.response_code(), ResponseCode::NotImp);
            assert_eq!((reply.id(), reply.op_code()), (SANDBOX_ID, op_code));
            assert_eq!(reply.message_type(), MessageType::Response);
        }
    }

    #[test]
    fn rejects_bad_names() {
        let labels = |labels: &[&[u8]]| Name::from_labels(labels.iter().copied()).unwrap();
        let bad = [
            Name::root(),
            name("1.2.3.4"),
            name("example.123"),
            labels(&[b"a.b", b"example", b"com"]),
            labels(&[b"sp ace", b"com"]),
            labels(&[b"caf\xc3\xa9", b"com"]),
            labels(&[b"\xff", b"com"]),
            labels(&[b"a\0b", b"com"]),
        ];
        for qname in bad {
            let mut message = Message::new();
            message
                .set_id(SANDBOX_ID)
                .add_query(Query::query(qname.clone(), RecordType::A));
            let bytes = message.to_vec().unwrap();
            let err = parse_query(&bytes).unwrap_err();
            assert!(matches!(err, QueryError::BadName(_)), "{qname:?}: {err}");
            assert_eq!(err.rcode(), Some(ResponseCode::Refused));
            // The refusal carries the question as sent.
            let reply = Message::from_vec(&error_response(&bytes, ResponseCode::Refused).unwrap());
            let reply = reply.unwrap();
            assert_eq!(reply.response_code(), ResponseCode::Refused);
            assert!(reply.queries()[0].name().eq_ignore_root_case(&qname));
        }
    }

    #[test]
    fn rejects_other_classes_meta_types_and_edns_versions() {
        let mut chaos = query_message("version.bind", RecordType::TXT);
        chaos.queries_mut()[0].set_query_class(DNSClass::CH);
        let err = parse_query(&chaos.to_vec().unwrap()).unwrap_err();
        assert!(
            matches!(err, QueryError::UnsupportedClass(DNSClass::CH)),
            "{err}"
        );

        for qtype in [
            RecordType::AXFR,
            RecordType::IXFR,
            RecordType::OPT,
            RecordType::TSIG,
        ] {
            let err = parse_query(&query_bytes("example.com", qtype)).unwrap_err();
            assert!(
                matches!(err, QueryError::UnsupportedType(t) if t == qtype),
                "{err}"
            );
        }
        assert!(parse_query(&query_bytes("example.com", RecordType::ANY)).is_ok());

        let mut message = query_message("example.com", RecordType::A);
        let mut edns = Edns::new();
        edns.set_version(1);
        message.set_edns(edns);
        let bytes = message.to_vec().unwrap();
        let err = parse_query(&bytes).unwrap_err();
        assert!(matches!(err, QueryError::BadEdnsVersion(1)), "{err}");
        let reply = Message::from_vec(&error_response(&bytes, err.rcode().unwrap()).unwrap());
        let reply = reply.unwrap();
        // BADVERS and BADSIG share code 16; hickory reads it back as BADSIG.
        assert_eq!(
            u16::from(reply.response_code()),
            u16::from(ResponseCode::BADVERS)
        );
        assert_eq!(reply.extensions().as_ref().unwrap().version(), 0);
    }

    #[test]
    fn rejects_garbage_and_impossible_counts() {
        assert!(matches!(parse_query(&[]), Err(QueryError::Unparsable(_))));
        assert!(matches!(
            parse_query(&[0; 11]),
            Err(QueryError::Unparsable(_))
        ));
        let mut bytes = query_bytes("example.com", RecordType::A);
        bytes.truncate(bytes.len() - 2);
        assert!(matches!(
            parse_query(&bytes),
            Err(QueryError::Unparsable(_))
        ));
        // A header announcing 65535 records in 12 bytes.
        let huge = [
            0x12, 0x34, 0x01, 0x00, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        let err = parse_query(&huge).unwrap_err();
        assert!(matches!(err, QueryError::Unparsable(_)), "{err}");
        assert_eq!(err.rcode(), Some(ResponseCode::FormErr));
    }

    #[test]
    fn upstream_query_carries_only_the_question() {
        let padding = vec![0xa5; 64];
        let cookie = vec![0x5a; 8];
        let mut message = query_message("ExAmPlE.com", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(4096).set_dnssec_ok(true);
        edns.options_mut().insert(EdnsOption::Unknown(
            u16::from(EdnsCode::Padding),
            padding.clone(),
        ));
        edns.options_mut().insert(EdnsOption::Unknown(
            u16::from(EdnsCode::Cookie),
            cookie.clone(),
        ));
        message
            .set_edns(edns)
            .set_checking_disabled(true)
            .set_authentic_data(true)
            .set_recursion_desired(false)
            .add_additional(a("exfil.attacker.test", 0xdead, [10, 9, 8, 7]))
            .add_additional(record(
                "x.example.com",
                1,
                RData::TXT(TXT::new(vec!["secret-payload".into()])),
            ));
        let noisy = parse_query(&message.to_vec().unwrap()).unwrap();
        let wire = upstream_query(&noisy, UPSTREAM_ID);

        // Byte for byte what a bare query for the same name gives.
        let plain = question("example.com", RecordType::A);
        assert_eq!(wire, upstream_query(&plain, UPSTREAM_ID));
        for marker in [
            &padding[..8],
            &cookie[..],
            b"secret-payload",
            b"exfil",
            b"ExAmPlE",
        ] {
            assert!(
                !wire.windows(marker.len()).any(|w| w == marker),
                "{marker:?} leaked"
            );
        }

        let sent = Message::from_vec(&wire).unwrap();
        assert_eq!(sent.id(), UPSTREAM_ID);
        assert_eq!(sent.message_type(), MessageType::Query);
        assert!(sent.recursion_desired());
        assert!(!sent.checking_disabled() && !sent.authentic_data());
        assert_eq!(sent.queries().len(), 1);
        assert!(
            sent.queries()[0]
                .name()
                .eq_ignore_root_case(&name("example.com."))
        );
        assert!(sent.answers().is_empty() && sent.name_servers().is_empty());
        assert!(sent.additionals().is_empty());
        let edns = sent.extensions().as_ref().unwrap();
        assert_eq!(edns.max_payload(), UDP_PAYLOAD);
        assert!(edns.options().as_ref().is_empty());
        assert!(!edns.flags().dnssec_ok);
        // Header, name, type and class, an 11-byte empty OPT record.
        assert_eq!(wire.len(), 12 + "example.com".len() + 2 + 4 + 11);
    }

    #[test]
    fn hand_built_questions_are_normalised() {
        let plain = question("example.com", RecordType::A);
        let by_hand = Question {
            name: "Example.COM.".into(),
            wire_name: Name::default(),
            ..plain.clone()
        };
        assert_eq!(upstream_query(&by_hand, 7), upstream_query(&plain, 7));
        let reply = upstream_reply(&plain, vec![a("example.com", 60, [192, 0, 2, 1])]);
        let filtered = filter_response(
            &by_hand,
            UPSTREAM_ID,
            &reply.to_vec().unwrap(),
            512,
            usize::MAX,
        );
        assert_eq!(
            filtered.unwrap().addresses,
            [(IpAddr::from([192, 0, 2, 1]), 60)]
        );
    }

    #[test]
    #[should_panic(expected = "not a domain name")]
    fn upstream_query_refuses_to_invent_a_name() {
        let q = Question {
            name: "a..b".into(),
            ..question("example.com", RecordType::A)
        };
        upstream_query(&q, 1);
    }

    #[test]
    fn refused_and_servfail_round_trip() {
        let q = parse_query(&query_bytes("Blocked.Example.", RecordType::AAAA)).unwrap();
        for (bytes, rcode) in [
            (refused(&q), ResponseCode::Refused),
            (servfail(&q), ResponseCode::ServFail),
        ] {
            let reply = Message::from_vec(&bytes).unwrap();
            assert_eq!(reply.response_code(), rcode);
            assert_eq!(reply.id(), SANDBOX_ID);
            assert_eq!(reply.message_type(), MessageType::Response);
            assert!(reply.recursion_desired() && reply.recursion_available());
            assert_eq!(reply.queries().len(), 1);
            assert!(
                reply.queries()[0]
                    .name()
                    .eq_ignore_root_case(&name("Blocked.Example."))
            );
            assert_eq!(reply.queries()[0].query_type(), RecordType::AAAA);
            assert_eq!(reply.answers().len() + reply.name_servers().len(), 0);
            assert!(reply.additionals().is_empty() && reply.extensions().is_none());
        }
    }

    #[test]
    fn refused_mirrors_edns_with_an_extended_error() {
        let mut message = query_message("blocked.example", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        message.set_edns(edns);
        let q = parse_query(&message.to_vec().unwrap()).unwrap();

        let reply = Message::from_vec(&refused(&q)).unwrap();
        let edns = reply.extensions().as_ref().unwrap();
        assert_eq!(edns.max_payload(), UDP_PAYLOAD);
        let Some(EdnsOption::Unknown(EDE_OPTION, info)) = edns.option(EdnsCode::from(EDE_OPTION))
        else {
            panic!("no EDE option: {edns:?}");
        };
        assert_eq!(info[..2], EDE_BLOCKED.to_be_bytes());

        let reply = Message::from_vec(&servfail(&q)).unwrap();
        let edns = reply.extensions().as_ref().unwrap();
        assert!(edns.options().as_ref().is_empty());
    }

    #[test]
    fn formerr_echoes_the_id_when_the_header_is_there() {
        assert_eq!(formerr(&[]), None);
        assert_eq!(formerr(&[0x12; 11]), None);
        let garbage = [0xab, 0xcd, 0x01, 0x00, 0, 3, 0, 0, 0, 0, 0, 0, 7, 1, 2];
        let reply = Message::from_vec(&formerr(&garbage).unwrap()).unwrap();
        assert_eq!(reply.id(), 0xabcd);
        assert_eq!(reply.response_code(), ResponseCode::FormErr);
        assert_eq!(reply.message_type(), MessageType::Response);
        assert!(reply.recursion_desired());
        assert!(reply.queries().is_empty());
    }

    #[test]
    fn follows_the_cname_chain_only() {
        let q = question("www.example.com", RecordType::A);
        let reply = upstream_reply(
            &q,
            vec![
                cname("www.example.com", 300, "a.cdn.test"),
                cname("A.CDN.test", 60, "b.cdn.test"),
                a("b.cdn.test", 3600, [192, 0, 2, 1]),
                a("b.cdn.test", 30, [192, 0, 2, 2]),
                a("unrelated.test", 3600, [198, 51, 100, 7]),
            ],
        );
        let filtered = filter(&q, &reply).unwrap();
        assert_eq!(filtered.cnames, ["a.cdn.test", "b.cdn.test"]);
        assert_eq!(
            filtered.addresses,
            [
                (IpAddr::from([192, 0, 2, 1]), 60),
                (IpAddr::from([192, 0, 2, 2]), 30),
            ]
        );
        assert!(!filtered.truncated);
        let sent = Message::from_vec(&filtered.bytes).unwrap();
        assert_eq!(sent.id(), SANDBOX_ID);
        assert_eq!(sent.response_code(), ResponseCode::NoError);
        assert_eq!(sent.answers().len(), 5);
        assert!(
            sent.queries()[0]
                .name()
                .eq_ignore_root_case(&name("www.example.com"))
        );
    }

    #[test]
    fn reports_aaaa_and_the_smallest_ttl() {
        let q = question("v6.example.com", RecordType::AAAA);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        let reply = upstream_reply(
            &q,
            vec![
                cname("v6.example.com", 20, "host.example.net"),
                record("host.example.net", 500, RData::AAAA(AAAA(v6))),
            ],
        );
        let filtered = filter(&q, &reply).unwrap();
        assert_eq!(filtered.addresses, [(IpAddr::V6(v6), 20)]);

        // No chain: the record's own TTL; a TTL with the top bit set counts as 0.
        let q = question("direct.example.com", RecordType::A);
        let reply = upstream_reply(
            &q,
            vec![a("direct.example.com", 0x8000_0000, [192, 0, 2, 9])],
        );
        assert_eq!(
            filter(&q, &reply).unwrap().addresses,
            [(IpAddr::from([192, 0, 2, 9]), 0)]
        );
    }

    #[test]
    fn a_cname_loop_yields_no_address() {
        let q = question("loop.example.com", RecordType::A);
        let reply = upstream_reply(
            &q,
            vec![
                cname("loop.example.com", 60, "b.example.com"),
                cname("b.example.com", 60, "loop.example.com"),
                a("loop.example.com", 60, [192, 0, 2, 1]),
            ],
        );
        let filtered = filter(&q, &reply).unwrap();
        assert!(filtered.addresses.is_empty());
        assert_eq!(filtered.cnames, ["b.example.com", "loop.example.com"]);
    }

    #[test]
    fn checks_id_question_and_direction() {
        let q = question("example.com", RecordType::A);
        let reply = upstream_reply(&q, vec![a("example.com", 60, [192, 0, 2, 1])]);
        let bytes = reply.to_vec().unwrap();
        let err = filter_response(&q, UPSTREAM_ID ^ 1, &bytes, 512, usize::MAX).unwrap_err();
        assert!(
            matches!(err, ResponseError::IdMismatch { expected, got: UPSTREAM_ID } if expected == UPSTREAM_ID ^ 1),
            "{err}"
        );

        for other in [
            question("example.org", RecordType::A),
            question("example.com", RecordType::AAAA),
        ] {
            let reply = upstream_reply(&other, vec![]);
            let err = filter(&q, &reply).unwrap_err();
            assert!(matches!(err, ResponseError::QuestionMismatch), "{err}");
        }
        let mut other_class = upstream_reply(&q, vec![]);
        other_class.queries_mut()[0].set_query_class(DNSClass::CH);
        let err = filter(&q, &other_class).unwrap_err();
        assert!(matches!(err, ResponseError::QuestionMismatch), "{err}");
        let mut no_question = upstream_reply(&q, vec![]);
        no_question.take_queries();
        let err = filter(&q, &no_question).unwrap_err();
        assert!(matches!(err, ResponseError::QuestionMismatch), "{err}");

        // The upstream may change the letter case (0x20).
        let mut upper = upstream_reply(&q, vec![]);
        upper.queries_mut()[0].set_name(name("EXAMPLE.com."));
        assert!(filter(&q, &upper).is_ok());

        let mut not_response = upstream_reply(&q, vec![]);
        not_response.set_message_type(MessageType::Query);
        let err = filter(&q, &not_response).unwrap_err();
        assert!(matches!(err, ResponseError::NotAResponse), "{err}");

        let err = filter_response(&q, UPSTREAM_ID, b"\x01\x02\x03", 512, usize::MAX).unwrap_err();
        assert!(matches!(err, ResponseError::Unparsable(_)), "{err}");
    }

    #[test]
    fn upstream_truncation_asks_for_tcp() {
        let q = question("big.example.com", RecordType::TXT);
        let mut reply = upstream_reply(&q, vec![]);
        reply.set_truncated(true);
        let err = filter(&q, &reply).unwrap_err();
        assert!(matches!(err, ResponseError::Truncated), "{err}");
    }

    #[test]
    fn removes_ech_and_keeps_the_other_params() {
        let q = question("tls.example.com", RecordType::HTTPS);
        let alpn = (
            SvcParamKey::Alpn,
            SvcParamValue::Alpn(Alpn(vec!["h2".into(), "h3".into()])),
        );
        let hint = (
            SvcParamKey::Ipv4Hint,
            SvcParamValue::Ipv4Hint(IpHint(vec![A::new(192, 0, 2, 1)])),
        );
        let ech = (
            SvcParamKey::EchConfigList,
            SvcParamValue::EchConfigList(EchConfigList(vec![0xfe, 0x0d, 0x00, 0x04, 1, 2, 3, 4])),
        );
        let reply = upstream_reply(
            &q,
            vec![https_record(
                "tls.example.com",
                vec![alpn.clone(), hint.clone(), ech],
            )],
        );
        let filtered = filter(&q, &reply).unwrap();
        assert_eq!(filtered.ech_removed, 1);
        // An HTTPS record's ipv4hint is not an address of the name.
        assert!(filtered.addresses.is_empty());
        let sent = Message::from_vec(&filtered.bytes).unwrap();
        assert_eq!(sent.answers().len(), 1);
        assert_eq!(svc_params(&sent.answers()[0]), [alpn, hint]);
    }

    #[test]
    fn removes_ech_from_the_mandatory_list() {
        let q = question("tls.example.com", RecordType::SVCB);
        let mandatory = |keys| {
            (
                SvcParamKey::Mandatory,
                SvcParamValue::Mandatory(Mandatory(keys)),
            )
        };
        let port = (SvcParamKey::Port, SvcParamValue::Port(8443));
        let ech = (
            SvcParamKey::EchConfigList,
            SvcParamValue::EchConfigList(EchConfigList(vec![1, 2, 3])),
        );
        let svcb = |params| {
            let svcb = SVCB::new(1, name("svc.example.com."), params);
            record("tls.example.com", 60, RData::SVCB(svcb))
        };
        let reply = upstream_reply(
            &q,
            vec![
                svcb(vec![
                    mandatory(vec![SvcParamKey::Port, SvcParamKey::EchConfigList]),
                    port.clone(),
                    ech.clone(),
                ]),
                svcb(vec![mandatory(vec![SvcParamKey::EchConfigList]), ech]),
            ],
        );
        let filtered = filter(&q, &reply).unwrap();
        assert_eq!(filtered.ech_removed, 2);
        let sent = Message::from_vec(&filtered.bytes).unwrap();
        assert_eq!(
            svc_params(&sent.answers()[0]),
            [mandatory(vec![SvcParamKey::Port]), port]
        );
        assert_eq!(svc_params(&sent.answers()[1]), []);
    }

    #[test]
    fn drops_additional_records_and_mirrors_edns() {
        let mut message = query_message("example.com", RecordType::NS);
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        message.set_edns(edns);
        let q = parse_query(&message.to_vec().unwrap()).unwrap();

        let ns = record("example.com", 60, RData::NS(NS(name("ns1.example.com"))));
        let mut reply = upstream_reply(&q, vec![ns]);
        reply.add_additional(a("ns1.example.com", 60, [192, 0, 2, 53]));
        let mut upstream_edns = Edns::new();
        upstream_edns.options_mut().insert(EdnsOption::Unknown(
            u16::from(EdnsCode::NSID),
            b"upstream-1".to_vec(),
        ));
        reply
            .set_edns(upstream_edns)
            .set_authoritative(true)
            .set_authentic_data(true);

        let filtered = filter(&q, &reply).unwrap();
        let sent = Message::from_vec(&filtered.bytes).unwrap();
        assert_eq!(sent.answers().len(), 1);
        assert!(sent.additionals().is_empty());
        assert!(!sent.authoritative() && !sent.authentic_data());
        let edns = sent.extensions().as_ref().unwrap();
        assert_eq!(edns.max_payload(), UDP_PAYLOAD);
        assert!(edns.options().as_ref().is_empty());
        // The NS target's glue is not reported either.
        assert!(filtered.addresses.is_empty());
    }

    #[test]
    fn passes_negative_answers_and_hides_formerr() {
        let q = question("nope.example.com", RecordType::A);
        let soa = SOA::new(
            name("ns.example.com"),
            name("admin.example.com"),
            1,
            3600,
            600,
            86400,
            300,
        );
        let mut reply = upstream_reply(&q, vec![]);
        reply
            .set_response_code(ResponseCode::NXDomain)
            .add_name_server(record("example.com", 300, RData::SOA(soa)));
        let sent = Message::from_vec(&filter(&q, &reply).unwrap().bytes).unwrap();
        assert_eq!(sent.response_code(), ResponseCode::NXDomain);
        assert_eq!(sent.name_servers().len(), 1);

        let mut reply = upstream_reply(&q, vec![]);
        reply.set_response_code(ResponseCode::FormErr);
        let sent = Message::from_vec(&filter(&q, &reply).unwrap().bytes).unwrap();
        assert_eq!(sent.response_code(), ResponseCode::ServFail);
    }

    #[test]
    fn truncates_what_does_not_fit() {
        let q = question("many.example.com", RecordType::A);
        let answers = (0..=255)
            .map(|i| a("many.example.com", 60, [10, 0, 0, i]))
            .collect();
        let reply = upstream_reply(&q, answers);
        let upstream = reply.to_vec().unwrap();

        for max_size in [512, 1232] {
            let filtered =
                filter_response(&q, UPSTREAM_ID, &upstream, max_size, usize::MAX).unwrap();
            assert!(filtered.truncated);
            assert!(filtered.bytes.len() <= max_size);
            assert!(filtered.addresses.is_empty());
            let sent = Message::from_vec(&filtered.bytes).unwrap();
            assert!(sent.truncated());
            assert!(sent.answers().is_empty());
            assert_eq!((sent.id(), sent.queries().len()), (SANDBOX_ID, 1));
        }
        // Over TCP it all fits.
        let filtered =
            filter_response(&q, UPSTREAM_ID, &upstream, TCP_MAX_SIZE, usize::MAX).unwrap();
        assert!(!filtered.truncated);
        assert_eq!(filtered.addresses.len(), 256);
        // Below the floor, the bare header and question.
        let filtered = filter_response(&q, UPSTREAM_ID, &upstream, 40, usize::MAX).unwrap();
        assert!(filtered.truncated && filtered.bytes.len() <= 40);
    }

    #[test]
    fn passes_on_at_most_the_capped_number_of_addresses() {
        let q = question("many.example.com", RecordType::A);
        let answers = (0..200)
            .map(|i| a("many.example.com", 60, [10, 0, 0, i]))
            .collect();
        let upstream = upstream_reply(&q, answers).to_vec().unwrap();
        let filtered = filter_response(&q, UPSTREAM_ID, &upstream, TCP_MAX_SIZE, 64).unwrap();
        assert_eq!(
            (filtered.addresses.len(), filtered.addresses_cut),
            (64, 136)
        );
        let sent = Message::from_vec(&filtered.bytes).unwrap();
        // The sandbox sees exactly the addresses the resolver learns.
        let sent_addresses: Vec<IpAddr> = sent
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect();
        let learned: Vec<IpAddr> = filtered.addresses.iter().map(|(a, _)| *a).collect();
        assert_eq!(sent_addresses, learned);
    }

    #[test]
    fn drops_authority_before_truncating() {
        let q = question("www.example.com", RecordType::A);
        let mut reply = upstream_reply(&q, vec![a("www.example.com", 60, [192, 0, 2, 1])]);
        for i in 0..40 {
            let target = name(&format!(
                "ns{i}.a-rather-long-name-server-domain.example.net"
            ));
            reply.add_name_server(record("example.com", 60, RData::NS(NS(target))));
        }
        let filtered = filter(&q, &reply).unwrap();
        assert!(!filtered.truncated);
        assert!(filtered.bytes.len() <= 512);
        let sent = Message::from_vec(&filtered.bytes).unwrap();
        assert!(!sent.truncated());
        assert_eq!((sent.answers().len(), sent.name_servers().len()), (1, 0));
        assert_eq!(filtered.addresses, [(IpAddr::from([192, 0, 2, 1]), 60)]);
    }

    /// xorshift64: deterministic noise without a dependency.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            usize::try_from(self.next()).unwrap() % bound
        }

        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let q = question("www.example.com", RecordType::HTTPS);
        let mut reply = upstream_reply(
            &q,
            vec![
                cname("www.example.com", 60, "cdn.example.net"),
                https_record(
                    "cdn.example.net",
                    vec![(
                        SvcParamKey::EchConfigList,
                        SvcParamValue::EchConfigList(EchConfigList(vec![1, 2])),
                    )],
                ),
            ],
        );
        reply.set_edns(Edns::new());
        let valid_reply = reply.to_vec().unwrap();
        let mut valid_query = query_message("www.example.com", RecordType::A);
        valid_query.set_edns(Edns::new());
        let valid_query = valid_query.to_vec().unwrap();

        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let bytes: Vec<u8> = match round % 3 {
                0 => (0..noise.below(300)).map(|_| noise.byte()).collect(),
                1 => mutate(&valid_query, &mut noise),
                _ => mutate(&valid_reply, &mut noise),
            };
            if let Err(err) = parse_query(&bytes)
                && let Some(rcode) = err.rcode()
            {
                let _ = error_response(&bytes, rcode);
            }
            let _ = formerr(&bytes);
            let _ = filter_response(&q, UPSTREAM_ID, &bytes, 512, usize::MAX);
        }
    }

    /// A copy of `valid` with a few bytes changed, or cut short.
    fn mutate(valid: &[u8], noise: &mut Noise) -> Vec<u8> {
        let mut bytes = valid.to_vec();
        for _ in 0..=noise.below(4) {
            let at = noise.below(bytes.len());
            bytes[at] = noise.byte();
        }
        if noise.below(4) == 0 {
            bytes.truncate(noise.below(bytes.len() + 1));
        }
        bytes
    }
}
