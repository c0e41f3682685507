//! `LeanCodec`: the codec every generated client and server uses. It is
//! prost's, with 1 KiB buffers instead of tonic's 8 KiB.
//!
//! tonic allocates an encode and a decode buffer for each call and keeps
//! them for a stream's whole life. A coordinator holds one Report stream
//! per agent: at 10,000 agents the default 16 KiB a stream is about
//! 160 MB of mostly empty buffers (a report is a few hundred bytes). A
//! buffer still grows to the largest message it carries, so a large
//! message costs a few more allocations, never a refusal.
//!
//! Must never: change what is on the wire.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes each call's buffers start with (tonic's default: 8 KiB).
pub const BUFFER_BYTES: usize = 1024;
/// How much a server stream batches before it yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost's codec with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
