//! Calls to the services behind the gateway with dynamic messages, over
//! the process's client stack (deadlines, breaker, retries, balancing), so
//! a gateway call fails exactly as a service-to-service call would.

use std::str::FromStr;

use http::uri::PathAndQuery;
use postmesh_kit::client::{CallTimeout, Clients, MeshChannel};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::metadata::MetadataMap;

use postmesh_transcoder::routes::Route;

/// Encodes request messages and decodes responses of a known type.
#[derive(Clone)]
struct DynamicCodec {
    output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder { output: self.output.clone() }
    }
}

struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

struct DynamicDecoder {
    output: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.output.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the response: {e}")))
    }
}

/// One call's request: the message, its metadata and, for streams, how
/// long it may stay open.
pub struct Call {
    /// The request message.
    pub message: DynamicMessage,
    /// Metadata to send (credential, forwarded headers, context).
    pub metadata: MetadataMap,
    /// Replaces the method's default deadline (streams).
    pub timeout: Option<std::time::Duration>,
}

async fn ready(
    clients: &Clients,
    route: &Route,
) -> Result<(tonic::client::Grpc<MeshChannel>, PathAndQuery), Status> {
    let channel = clients.channel(route.target()).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::from_error(Box::new(e)))?;
    let path = PathAndQuery::from_str(route.grpc_path()).map_err(|e| Status::internal(e.to_string()))?;
    Ok((grpc, path))
}

fn request(call: Call) -> tonic::Request<DynamicMessage> {
    let mut extensions = tonic::Extensions::new();
    if let Some(timeout) = call.timeout {
        extensions.insert(CallTimeout(timeout));
    }
    tonic::Request::from_parts(call.metadata, extensions, call.message)
}

/// Calls a unary RPC.
pub async fn unary(clients: &Clients, route: &Route, call: Call) -> Result<DynamicMessage, Status> {
    let (mut grpc, path) = ready(clients, route).await?;
    let codec = DynamicCodec { output: route.rpc.output() };
    Ok(grpc.unary(request(call), path, codec).await?.into_inner())
}

/// Opens a server-streaming RPC.
pub async fn server_streaming(
    clients: &Clients,
    route: &Route,
    call: Call,
) -> Result<Streaming<DynamicMessage>, Status> {
    let (mut grpc, path) = ready(clients, route).await?;
    let codec = DynamicCodec { output: route.rpc.output() };
    Ok(grpc.server_streaming(request(call), path, codec).await?.into_inner())
}
