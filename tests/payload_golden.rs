//! The `#[service]` payload layout of docs/PROTOCOL.md §5.8, checked byte for byte. The worked
//! examples are read from the document itself (like crates/rpc-codec/tests/golden.rs does for
//! §16), so the spec and the code cannot drift apart: each value encodes to exactly its bytes, the
//! bytes decode to the value, a generated server answers the REQUEST payload with the RESPONSE
//! payload, and a generated client sends the REQUEST payload. The encoding rules the section
//! states are checked against the same codec.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use keel::core::DEFAULT_DECODE_LIMIT;
use keel::{
    Bincode, Bytes, CallContext, CallOptions, Channel, Outcome, PayloadCodec, PayloadError, Server,
    StatusCode,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const PROTOCOL_MD: &str = include_str!("../docs/PROTOCOL.md");

/// The codec `#[service]`-generated code uses on both sides.
const CODEC: Bincode = Bincode::new();

/// The bytes of the hex block after `<!-- golden: NAME -->`.
fn golden(name: &str) -> Vec<u8> {
    let marker = format!("<!-- golden: {name} -->");
    let after = PROTOCOL_MD
        .split_once(&marker)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no {marker}"))
        .1;
    let block = after
        .split_once("```hex\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("no hex block after {marker}"))
        .0;
    block
        .split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

/// The echo service's error, as in examples/echo.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EchoError {
    /// The server refuses to echo this word.
    Refused(String),
}

/// The echo service of examples/echo.rs, method for method.
#[keel::service]
pub trait Echo {
    /// Returns `text`.
    async fn echo(&self, text: String) -> String;
    /// Returns `data`.
    #[idempotent]
    async fn echo_bytes(&self, data: Bytes) -> Bytes;
    /// Returns `word`, unless it is "boom".
    async fn check(&self, word: String) -> Result<String, EchoError>;
    /// Returns `millis` (without sleeping: only the layout matters here).
    async fn sleep(&self, millis: u64) -> u64;
}

/// Counts the calls that reached a method.
#[derive(Default)]
struct EchoService {
    ran: Arc<Mutex<usize>>,
}

impl EchoService {
    fn ran(&self) {
        *self.ran.lock().unwrap() += 1;
    }
}

impl Echo for EchoService {
    async fn echo(&self, text: String) -> String {
        self.ran();
        text
    }

    async fn echo_bytes(&self, data: Bytes) -> Bytes {
        self.ran();
        data
    }

    async fn check(&self, word: String) -> Result<String, EchoError> {
        self.ran();
        if word == "boom" {
            Err(EchoError::Refused(word))
        } else {
            Ok(word)
        }
    }

    async fn sleep(&self, millis: u64) -> u64 {
        self.ran();
        millis
    }
}

const BYTES: &[u8] = &[0x00, 0x01, 0xfe, 0xff];

/// `(method, request example, response example)` for every worked example.
const EXAMPLES: &[(&str, &str, &str)] = &[
    ("Echo.echo", "payload-echo-request", "payload-echo-response"),
    (
        "Echo.echo_bytes",
        "payload-echo-bytes-request",
        "payload-echo-bytes-response",
    ),
    (
        "Echo.check",
        "payload-check-ok-request",
        "payload-check-ok-response",
    ),
    (
        "Echo.check",
        "payload-check-err-request",
        "payload-check-err-response",
    ),
    (
        "Echo.sleep",
        "payload-sleep-request",
        "payload-sleep-response",
    ),
];

/// `value` encodes to exactly the bytes of example `name`, and those bytes decode to `value`.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, value: &T) {
    let bytes = golden(name);
    assert_eq!(
        CODEC.encode(value).unwrap().to_vec(),
        bytes,
        "encoding of {name}"
    );
    assert_eq!(
        &CODEC.decode::<T>(&bytes).unwrap(),
        value,
        "decoding of {name}"
    );
}

#[test]
fn the_worked_examples_encode_and_decode_byte_for_byte() {
    // REQUEST payloads are the argument tuple; RESPONSE payloads the declared return value.
    check("payload-echo-request", &("hi".to_owned(),));
    check("payload-echo-response", &"hi".to_owned());
    check("payload-echo-bytes-request", &(Bytes::from_static(BYTES),));
    check("payload-echo-bytes-response", &Bytes::from_static(BYTES));
    check("payload-check-ok-request", &("fine".to_owned(),));
    check(
        "payload-check-ok-response",
        &Ok::<String, EchoError>("fine".to_owned()),
    );
    check("payload-check-err-request", &("boom".to_owned(),));
    check(
        "payload-check-err-response",
        &Err::<String, EchoError>(EchoError::Refused("boom".to_owned())),
    );
    check("payload-sleep-request", &(300u64,));
    check("payload-sleep-response", &300u64);
}

async fn echo_server() -> (keel::ServerHandle, Arc<Mutex<usize>>) {
    let service = EchoService::default();
    let ran = Arc::clone(&service.ran);
    let server = Server::builder()
        .add_service(EchoServer::new(service))
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    (server, ran)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_server_answers_each_request_payload_with_its_response_payload() {
    let (server, ran) = echo_server().await;
    let channel = Channel::builder(server.local_addr()).build();
    for &(method, request, response) in EXAMPLES {
        let reply = channel
            .call(method, Bytes::from(golden(request)), CallOptions::new())
            .await
            .unwrap_or_else(|e| panic!("{method} with {request}: {e}"));
        assert_eq!(
            reply.payload.to_vec(),
            golden(response),
            "{method}: {response}"
        );
    }
    assert_eq!(*ran.lock().unwrap(), EXAMPLES.len());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_sends_each_request_payload_and_decodes_its_response_payload() {
    // Raw handlers: record the payload received, answer with the example's response payload.
    let seen: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let mut builder = Server::builder();
    for (method, response) in [
        ("Echo.echo", "payload-echo-response"),
        ("Echo.echo_bytes", "payload-echo-bytes-response"),
        ("Echo.sleep", "payload-sleep-response"),
    ] {
        let seen = Arc::clone(&seen);
        let answer = Bytes::from(golden(response));
        builder = builder.register(method, move |ctx: CallContext, payload: Bytes| {
            seen.lock()
                .unwrap()
                .push((ctx.method().to_owned(), payload));
            let answer = answer.clone();
            async move { Ok(answer) }
        });
    }
    // Echo.check answers by its argument, so both of its examples go through one handler.
    let check_seen = Arc::clone(&seen);
    builder = builder.register("Echo.check", move |ctx: CallContext, payload: Bytes| {
        let answer = if payload[..] == golden("payload-check-err-request")[..] {
            golden("payload-check-err-response")
        } else {
            golden("payload-check-ok-response")
        };
        check_seen
            .lock()
            .unwrap()
            .push((ctx.method().to_owned(), payload));
        async move { Ok(Bytes::from(answer)) }
    });
    let server = builder.build().bind("127.0.0.1:0").await.unwrap();
    let client = EchoClient::new(Channel::builder(server.local_addr()).build());

    assert_eq!(client.echo("hi".into()).await.unwrap(), "hi");
    assert_eq!(
        client.echo_bytes(Bytes::from_static(BYTES)).await.unwrap(),
        Bytes::from_static(BYTES)
    );
    assert_eq!(
        client.check("fine".into()).await.unwrap(),
        Ok("fine".into())
    );
    assert_eq!(
        client.check("boom".into()).await.unwrap(),
        Err(EchoError::Refused("boom".into()))
    );
    assert_eq!(client.sleep(300).await.unwrap(), 300);

    let seen = seen.lock().unwrap().clone();
    let sent: Vec<(String, Vec<u8>)> = seen
        .into_iter()
        .map(|(method, payload)| (method, payload.to_vec()))
        .collect();
    let expected: Vec<(String, Vec<u8>)> = [
        ("Echo.echo", "payload-echo-request"),
        ("Echo.echo_bytes", "payload-echo-bytes-request"),
        ("Echo.check", "payload-check-ok-request"),
        ("Echo.check", "payload-check-err-request"),
        ("Echo.sleep", "payload-sleep-request"),
    ]
    .into_iter()
    .map(|(method, request)| (method.to_owned(), golden(request)))
    .collect();
    assert_eq!(sent, expected);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_payloads_that_do_not_decode_are_refused_before_the_method_runs() {
    let (server, ran) = echo_server().await;
    let channel = Channel::builder(server.local_addr()).build();
    let mut refused = Vec::new();
    // Every example request with one byte after the value.
    for &(method, request, _) in EXAMPLES {
        let mut payload = golden(request);
        payload.push(0);
        refused.push((method, payload));
    }
    refused.extend([
        // §16.3's opaque frame payload `hi`: 0x68 claims a 104-byte string.
        ("Echo.echo", b"hi".to_vec()),
        // Not UTF-8.
        ("Echo.echo", vec![0x02, 0xff, 0xfe]),
        // Empty: `(String,)` needs at least its length.
        ("Echo.echo", vec![]),
        // A string claiming 2^40 bytes: over the decode limit.
        ("Echo.echo", vec![0xfd, 0, 0, 0, 0, 0, 0x01, 0, 0]),
        // A `u64` varint with the reserved marker 0xff.
        ("Echo.sleep", vec![0xff]),
    ]);
    for (method, payload) in refused {
        let err = channel
            .call(
                method,
                Bytes::from(payload.clone()),
                CallOptions::new().no_retry(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.outcome()),
            (StatusCode::INVALID_ARGUMENT, Outcome::NotExecuted),
            "{method} with {payload:02x?}: {err}"
        );
        assert!(
            err.status()
                .message()
                .starts_with(&format!("{method}: the arguments do not decode")),
            "{err}"
        );
    }
    assert_eq!(*ran.lock().unwrap(), 0, "a refused call reached its method");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_does_not_decode_fails_the_call_internal_executed() {
    // The response payload of `Echo.echo` with one byte too many.
    let mut answer = golden("payload-echo-response");
    answer.push(0);
    let answer = Bytes::from(answer);
    let server = Server::builder()
        .register("Echo.echo", move |_ctx: CallContext, _payload: Bytes| {
            let answer = answer.clone();
            async move { Ok(answer) }
        })
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let client = EchoClient::new(Channel::builder(server.local_addr()).build());
    let err = client.echo("hi".into()).await.unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::INTERNAL, Outcome::Executed),
        "{err}"
    );
    assert!(
        err.status()
            .message()
            .starts_with("Echo.echo: the reply does not decode"),
        "{err}"
    );
    server.shutdown().await;
}

fn bytes_of<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    CODEC.encode(value).unwrap().to_vec()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    CODEC.decode(bytes)
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Unit;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Newtype(u32);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Pair(u8, String);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Fields {
    a: u16,
    b: bool,
    c: Option<u8>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Newtype(u8),
    Tuple(u8, u8),
    Struct { x: u8, y: String },
}

/// Serializes as serde bytes, as `serde_bytes` types do.
struct SerdeBytes<'a>(&'a [u8]);

impl Serialize for SerdeBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

#[test]
fn the_encoding_rules_of_the_section_hold() {
    // Unsigned varints: 0–250 one byte; 251/252/253/254 then u16/u32/u64/u128 little-endian.
    for (value, bytes) in [
        (0u64, &[0x00][..]),
        (250, &[0xfa]),
        (251, &[0xfb, 0xfb, 0x00]),
        (300, &[0xfb, 0x2c, 0x01]),
        (65_535, &[0xfb, 0xff, 0xff]),
        (65_536, &[0xfc, 0x00, 0x00, 0x01, 0x00]),
        (70_000, &[0xfc, 0x70, 0x11, 0x01, 0x00]),
        (u64::from(u32::MAX), &[0xfc, 0xff, 0xff, 0xff, 0xff]),
        (1 << 32, &[0xfd, 0, 0, 0, 0, 1, 0, 0, 0]),
        (
            u64::MAX,
            &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ] {
        assert_eq!(bytes_of(&value), bytes, "u64 {value}");
        assert_eq!(decode::<u64>(bytes).unwrap(), value);
    }
    assert_eq!(bytes_of(&251u16), [0xfb, 0xfb, 0x00]);
    assert_eq!(bytes_of(&300u32), [0xfb, 0x2c, 0x01]);
    assert_eq!(bytes_of(&300usize), [0xfb, 0x2c, 0x01]);
    assert_eq!(bytes_of(&300u128), [0xfb, 0x2c, 0x01]);
    let mut u128_bytes = vec![0xfe];
    u128_bytes.extend((1u128 << 64).to_le_bytes());
    assert_eq!(bytes_of(&(1u128 << 64)), u128_bytes);
    // A longer form than needed decodes; a marker wider than the type, or 0xff, does not.
    assert_eq!(decode::<u64>(&[0xfb, 0x05, 0x00]).unwrap(), 5);
    assert!(decode::<u16>(&[0xfc, 1, 0, 0, 0]).is_err());
    assert!(decode::<u32>(&[0xfd, 1, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(decode::<u64>(&[0xfe, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(decode::<u64>(&[0xff]).is_err());
    // u8 and i8 are one raw byte, never a varint.
    assert_eq!(bytes_of(&255u8), [0xff]);
    assert_eq!(bytes_of(&251u8), [0xfb]);
    assert_eq!(bytes_of(&-1i8), [0xff]);
    assert_eq!(bytes_of(&i8::MIN), [0x80]);
    // Signed: zig-zag, then the varint.
    for (value, bytes) in [
        (0i64, &[0x00][..]),
        (-1, &[0x01]),
        (1, &[0x02]),
        (-2, &[0x03]),
        (125, &[0xfa]),
        (-126, &[0xfb, 0xfb, 0x00]),
        (
            i64::MAX,
            &[0xfd, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
        (
            i64::MIN,
            &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ] {
        assert_eq!(bytes_of(&value), bytes, "i64 {value}");
        assert_eq!(decode::<i64>(bytes).unwrap(), value);
    }
    assert_eq!(bytes_of(&-70_000i32), [0xfc, 0xdf, 0x22, 0x02, 0x00]);
    assert_eq!(bytes_of(&-1isize), [0x01]);
    // bool, floats, char, unit.
    assert_eq!(bytes_of(&(true, false)), [0x01, 0x00]);
    assert!(decode::<bool>(&[0x02]).is_err());
    assert_eq!(bytes_of(&1.0f32), [0x00, 0x00, 0x80, 0x3f]);
    assert_eq!(bytes_of(&-0.5f64), [0, 0, 0, 0, 0, 0, 0xe0, 0xbf]);
    assert_eq!(bytes_of(&'a'), [0x61]);
    assert_eq!(bytes_of(&'é'), [0xc3, 0xa9]);
    assert_eq!(bytes_of(&'😀'), [0xf0, 0x9f, 0x98, 0x80]);
    assert!(decode::<char>(&[0xed, 0xa0, 0x80]).is_err());
    assert_eq!(bytes_of(&()), [0u8; 0]);
    assert_eq!(bytes_of(&Unit), [0u8; 0]);
    // Strings: length, then UTF-8; invalid UTF-8 does not decode.
    assert_eq!(bytes_of("hi"), [0x02, 0x68, 0x69]);
    assert_eq!(bytes_of(&String::new()), [0x00]);
    assert!(matches!(
        decode::<String>(&[0x02, 0xff, 0xfe]),
        Err(PayloadError::Decode(_))
    ));
    // Byte buffers: Bytes, serde bytes and Vec<u8> (a sequence of u8) coincide; arrays have no length.
    const BLOB: [u8; 3] = [0x01, 0x02, 0x03];
    let blob = BLOB;
    assert_eq!(bytes_of(&Bytes::from_static(&BLOB)), [0x03, 1, 2, 3]);
    assert_eq!(bytes_of(&SerdeBytes(&blob)), [0x03, 1, 2, 3]);
    assert_eq!(bytes_of(&blob.to_vec()), [0x03, 1, 2, 3]);
    assert_eq!(decode::<Vec<u8>>(&[0x03, 1, 2, 3]).unwrap(), blob);
    assert_eq!(decode::<Bytes>(&[0x03, 1, 2, 3]).unwrap(), &blob[..]);
    assert_eq!(bytes_of(&blob), [1, 2, 3]);
    // Sequences and maps: count, then the elements (entries: key, value).
    assert_eq!(bytes_of(&vec![1u16, 300]), [0x02, 0x01, 0xfb, 0x2c, 0x01]);
    assert_eq!(
        bytes_of(&vec!["a".to_owned(), "bc".to_owned()]),
        [0x02, 0x01, 0x61, 0x02, 0x62, 0x63]
    );
    let map = BTreeMap::from([(2u8, "b".to_owned()), (1u8, "a".to_owned())]);
    assert_eq!(bytes_of(&map), [0x02, 0x01, 0x01, 0x61, 0x02, 0x01, 0x62]);
    // A repeated key is no error: the last value wins.
    assert_eq!(
        decode::<BTreeMap<u8, u8>>(&[0x02, 0x01, 0x01, 0x01, 0x02]).unwrap(),
        BTreeMap::from([(1, 2)])
    );
    // Option.
    assert_eq!(bytes_of(&None::<u8>), [0x00]);
    assert_eq!(bytes_of(&Some(5u8)), [0x01, 0x05]);
    assert!(decode::<Option<u8>>(&[0x02]).is_err());
    // Tuples: the elements back to back; `()` is nothing, `(a,)` is `a`.
    assert_eq!(bytes_of(&(2u32, 40u64, -1i8)), [0x02, 0x28, 0xff]);
    assert_eq!(bytes_of(&("hi".to_owned(),)), bytes_of("hi"));
    // Structs: fields in order, no names; newtypes are their inner value.
    assert_eq!(bytes_of(&Newtype(300)), [0xfb, 0x2c, 0x01]);
    assert_eq!(bytes_of(&Pair(1, "a".into())), [0x01, 0x01, 0x61]);
    assert_eq!(
        bytes_of(&Fields {
            a: 300,
            b: true,
            c: Some(7)
        }),
        [0xfb, 0x2c, 0x01, 0x01, 0x01, 0x07]
    );
    // Enums: the variant index as a u32 varint, then the variant's fields.
    assert_eq!(bytes_of(&Shape::Unit), [0x00]);
    assert_eq!(bytes_of(&Shape::Newtype(5)), [0x01, 0x05]);
    assert_eq!(bytes_of(&Shape::Tuple(1, 2)), [0x02, 0x01, 0x02]);
    assert_eq!(
        bytes_of(&Shape::Struct {
            x: 1,
            y: "z".into()
        }),
        [0x03, 0x01, 0x01, 0x7a]
    );
    assert!(decode::<Shape>(&[0x04]).is_err());
    assert_eq!(bytes_of(&Ok::<u8, u8>(7)), [0x00, 0x07]);
    assert_eq!(bytes_of(&Err::<u8, u8>(7)), [0x01, 0x07]);
    // Trailing bytes are refused.
    assert!(matches!(
        decode::<()>(&[0x00]),
        Err(PayloadError::TrailingBytes { extra: 1 })
    ));
}

#[derive(Debug, Serialize, Deserialize)]
enum Tree {
    Leaf,
    Node(Box<Self>),
}

#[test]
fn values_nest_at_most_128_deep() {
    let nested = |levels: usize| {
        let mut bytes = vec![0x01; levels - 1];
        bytes.push(0x00);
        bytes
    };
    assert!(decode::<Tree>(&nested(128)).is_ok());
    assert!(matches!(
        decode::<Tree>(&nested(129)),
        Err(PayloadError::Decode(_))
    ));
    // Inside an argument tuple, the tuple is the first level.
    assert!(decode::<(Tree,)>(&nested(127)).is_ok());
    assert!(decode::<(Tree,)>(&nested(128)).is_err());
    // A payload nested far deeper is refused, not a stack overflow.
    assert!(decode::<Tree>(&nested(1_000_000)).is_err());
}

#[test]
fn the_decode_limit_counts_decoded_widths_not_payload_bytes() {
    assert_eq!(DEFAULT_DECODE_LIMIT, 16 * 1024 * 1024);
    let over = |r: Result<(), PayloadError>| matches!(r, Err(PayloadError::LimitExceeded { limit }) if limit == DEFAULT_DECODE_LIMIT);
    // A string claiming 2^40 bytes is refused at once, whatever follows.
    assert!(over(
        decode::<String>(&[0xfd, 0, 0, 0, 0, 0, 0x01, 0, 0]).map(drop)
    ));
    assert!(over(
        decode::<Bytes>(&[0xfd, 0, 0, 0, 0, 0, 0x01, 0, 0]).map(drop)
    ));
    // 8 for the length plus the length itself: 16 777 208 bytes is the largest string.
    let largest = DEFAULT_DECODE_LIMIT - 8;
    let fits = CODEC.encode(&Bytes::from(vec![0u8; largest])).unwrap();
    assert_eq!(decode::<Bytes>(&fits).unwrap().len(), largest);
    let too_big = CODEC.encode(&Bytes::from(vec![0u8; largest + 1])).unwrap();
    assert!(over(decode::<Bytes>(&too_big).map(drop)));
    // Claims add up over the whole payload: one more byte (a u8 before it) is too much.
    let mut with_u8 = vec![0u8];
    with_u8.extend_from_slice(&fits);
    assert!(over(decode::<(u8, Bytes)>(&with_u8).map(drop)));
    // A length within the limit but past the payload's end is a plain decode error.
    assert!(matches!(
        decode::<String>(&[0xfc, 0xf8, 0xff, 0xff, 0x00]),
        Err(PayloadError::Decode(_))
    ));
    // Integers count their full width: 2 097 151 zero u64s (8 + 8 × n = 16 MiB) decode, one
    // more does not, though the payload is only about 2 MiB.
    let n = (DEFAULT_DECODE_LIMIT - 8) / 8;
    let fits = CODEC.encode(&vec![0u64; n]).unwrap();
    assert_eq!(fits.len(), 5 + n);
    assert_eq!(decode::<Vec<u64>>(&fits).unwrap().len(), n);
    let too_many = CODEC.encode(&vec![0u64; n + 1]).unwrap();
    assert!(over(decode::<Vec<u64>>(&too_many).map(drop)));
    // A sequence's count is not checked up front: a count past the data is a plain decode error.
    assert!(matches!(
        decode::<Vec<u64>>(&[0xfd, 0, 0, 0, 0, 0, 0x01, 0, 0]),
        Err(PayloadError::Decode(_))
    ));
    // Each element adds at least 1, so a count of zero-width elements is bounded by the limit:
    // 8 for the count, then 1 per unit.
    let units = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert!(over(decode::<Vec<()>>(&units).map(drop)));
    assert!(
        Bincode::with_limit(8 + 1000)
            .decode::<Vec<()>>(&CODEC.encode(&vec![(); 1000]).unwrap())
            .is_ok()
    );
    assert!(
        Bincode::with_limit(8 + 999)
            .decode::<Vec<()>>(&CODEC.encode(&vec![(); 1000]).unwrap())
            .is_err()
    );
    // The limit follows the receiver's frame limit: 4 × MAX_FRAME_SIZE.
    assert_eq!(
        Bincode::for_frame_limit(4 * 1024 * 1024).limit(),
        DEFAULT_DECODE_LIMIT
    );
    assert_eq!(
        Bincode::for_frame_limit(64 * 1024 * 1024).limit(),
        256 * 1024 * 1024
    );
    // The widths: the largest limit at which one value still fails, for each kind.
    macro_rules! width {
        ($t:ty, $bytes:expr, $width:literal) => {
            assert!(Bincode::with_limit($width).decode::<$t>(&$bytes).is_ok());
            assert!(matches!(
                Bincode::with_limit($width - 1).decode::<$t>(&$bytes),
                Err(PayloadError::LimitExceeded { .. })
            ));
        };
    }
    width!(u8, [0], 1);
    width!(bool, [0], 1);
    width!(Option<()>, [0], 1);
    width!(u16, [0], 2);
    width!(u32, [0], 4);
    width!(f32, [0; 4], 4);
    width!(Shape, [0], 4);
    width!(u64, [0], 8);
    width!(i64, [0], 8);
    width!(f64, [0; 8], 8);
    width!(u128, [0], 16);
    width!(char, [0xc3, 0xa9], 2);
    width!(String, [0x02, 0x68, 0x69], 10);
    width!(Vec<u8>, [0x02, 0x01, 0x02], 10);
    width!(Vec<u16>, [0x02, 0x01, 0x02], 12);
    assert!(Bincode::with_limit(0).decode::<()>(&[]).is_ok());
}
