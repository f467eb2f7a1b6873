//! One decode step captured as a CUDA graph on candle's stream, then replayed.
//!
//! Owns: the capture (candle 0.11 makes its kernels capture-safe once a warm-up
//! step has put every kernel parameter on the device, but has no capture API,
//! so this goes through cudarc on candle's stream) and the replay. Must not:
//! choose when to capture (that is [`super::StaticDecoder`]) or hold anything
//! past the model: a graph is dropped with its decoder, before Release resets
//! the CUDA context.

use candle_core::Device;
use cudarc::driver::{sys, CudaGraph};

/// A captured decode step.
pub struct StepGraph {
    graph: CudaGraph,
}

// SAFETY: a CUDA graph exec may be launched from any thread as long as calls on
// it are serialized; the decoder that owns it sits behind the model's mutex, and
// cudarc binds the context to the calling thread on every launch.
unsafe impl Send for StepGraph {}

/// Runs `step` once eagerly with candle's parameter cache on, so that the
/// capture that follows finds every kernel parameter already on the device.
pub fn warm_up(
    device: &Device,
    step: impl FnOnce() -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    match device {
        Device::Cuda(d) => {
            let _cache = d.enable_cuda_graph_htod_cache();
            step()
        }
        _ => step(),
    }
}

impl StepGraph {
    /// Captures the kernels `step` launches (nothing runs until [`StepGraph::launch`]).
    /// Every tensor `step` allocates must be freed before it returns.
    pub fn capture(
        device: &Device,
        step: impl FnOnce() -> candle_core::Result<()>,
    ) -> candle_core::Result<Self> {
        let Device::Cuda(d) = device else {
            candle_core::bail!("CUDA graphs need a CUDA device, found {device:?}");
        };
        let stream = d.cuda_stream();
        let _cache = d.enable_cuda_graph_htod_cache();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| candle_core::Error::Msg(format!("begin capture: {e:?}")))?;
        let body = step();
        // Always end the capture, so the stream is usable again whatever happened.
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        body.map_err(|e| candle_core::Error::Msg(format!("captured step: {e}")))?;
        match ended {
            Ok(Some(graph)) => {
                graph
                    .upload()
                    .map_err(|e| candle_core::Error::Msg(format!("graph upload: {e:?}")))?;
                Ok(Self { graph })
            }
            Ok(None) => candle_core::bail!("the captured step launched no kernels"),
            Err(e) => candle_core::bail!("end capture / instantiate: {e:?}"),
        }
    }

    /// Replays the step on candle's stream.
    pub fn launch(&self) -> candle_core::Result<()> {
        self.graph
            .launch()
            .map_err(|e| candle_core::Error::Msg(format!("graph launch: {e:?}")))
    }
}

/// Page-locked host memory the decode step's logits are copied into.
pub struct PinnedLogits {
    host: cudarc::driver::PinnedHostSlice<f32>,
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
}

impl PinnedLogits {
    /// `len` f32 values of page-locked memory (not write-combined: the CPU reads it).
    pub fn new(device: &candle_core::CudaDevice, len: usize) -> candle_core::Result<Self> {
        let stream = device.cuda_stream();
        // SAFETY: the memory is only read after the stream that copies into it
        // has been synchronized (`read`).
        let host = unsafe { stream.context().alloc_pinned_with_flags::<f32>(len, 0) }
            .map_err(|e| candle_core::Error::Msg(format!("page-locked logits buffer: {e:?}")))?;
        Ok(Self { host, stream })
    }

    /// Copies `logits` `(B, V)` f32 from the device and returns it as rows.
    pub fn read(&mut self, logits: &candle_core::Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        let (b, v) = logits.dims2()?;
        if b * v > self.host.len() {
            candle_core::bail!(
                "logits {b}x{v} do not fit the {}-value buffer",
                self.host.len()
            );
        }
        let (storage, layout) = logits.storage_and_layout();
        let candle_core::Storage::Cuda(cuda) = &*storage else {
            candle_core::bail!("logits are not on a CUDA device");
        };
        let start = layout.start_offset();
        let src = cuda.as_cuda_slice::<f32>()?.slice(start..start + b * v);
        self.stream
            .memcpy_dtoh(&src, &mut self.host)
            .map_err(|e| candle_core::Error::Msg(format!("copy logits to host: {e:?}")))?;
        // cudarc records the buffer's event only when a context runs several
        // streams, so `as_slice` alone would not wait for the copy: wait here.
        self.stream
            .synchronize()
            .map_err(|e| candle_core::Error::Msg(format!("wait for logits: {e:?}")))?;
        let host = self
            .host
            .as_slice()
            .map_err(|e| candle_core::Error::Msg(format!("read logits: {e:?}")))?;
        Ok(host[..b * v].chunks(v).map(<[f32]>::to_vec).collect())
    }
}
