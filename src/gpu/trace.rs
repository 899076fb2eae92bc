//! A record of everything a [`GpuContext`](super::GpuContext) does — buffers, writes,
//! dispatches, copies, submissions, read-backs — that another WebGPU host replays.
//!
//! This is how the browser demo (`web/`) keeps one source of truth: the Rust library runs its
//! own quantize, dequantize and attention code once with tracing on, and the page replays the
//! recorded commands with the same WGSL files. Every dispatch carries its kernel files, entry
//! point, the 28-word parameter block, the bound buffer ranges and the workgroup grid.
//!
//! Written data is stored by reference where it can be: bytes that equal a slice of a named
//! *source* (the sample's tensors) or of an earlier read-back (data that made a trip through
//! host memory, such as packed planes uploaded for attention) point there, so the replaying
//! page feeds its own sample and its own GPU results forward; everything else (channel
//! orders, twiddles, guard words, queries laid out per tile) goes into a binary blob.
//!
//! Plan format (`to_plan`): `{"version":1,"buffers":[{"label","size"}],"events":[…]}` with
//! events `{"op":"step","name"}`, `{"op":"note","note"}` (what the caller says the next
//! commands are for), `{"op":"write","buffer","offset","data"}` where `data` lists
//! consecutive pieces `{"source","offset","len"}`, `{"read","offset","len"}` or
//! `{"blob","len"}` (offsets and lengths in bytes; a blob piece's `blob` is its offset),
//! `{"op":"dispatch","kernel","files","entry","params","bindings":[[binding,buffer,offset,size]],"grid"}`
//! (`size` 0 = to the end of the buffer), `{"op":"copy","from","from_offset","to","to_offset","size"}`,
//! `{"op":"submit"}` and `{"op":"read","buffer","words","read","label"}`.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::binding::Bound;
use super::params::Params;
use super::shaders::Kernel;

/// Bytes compared to find written data in the sources and read-backs.
const KEY_BYTES: usize = 16;

/// Where the bytes of a write come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Origin {
    Source(usize),
    Read(usize),
}

/// The recorded commands of one traced run.
pub struct Trace {
    buffers: HashMap<wgpu::Buffer, usize>,
    buffer_list: Vec<(String, u64)>,
    events: Vec<Value>,
    blob: Vec<u8>,
    source_names: Vec<String>,
    /// Bytes of every source and read-back, and an index of their 16-byte prefixes.
    data: HashMap<Origin, Vec<u8>>,
    index: HashMap<[u8; KEY_BYTES], (Origin, usize)>,
    reads: usize,
}

impl Trace {
    /// A trace that refers writes to `sources` (name, bytes) where they match.
    pub fn new(sources: Vec<(String, Vec<u8>)>) -> Self {
        let mut trace = Trace {
            buffers: HashMap::new(),
            buffer_list: Vec::new(),
            events: Vec::new(),
            blob: Vec::new(),
            source_names: Vec::new(),
            data: HashMap::new(),
            index: HashMap::new(),
            reads: 0,
        };
        for (i, (name, bytes)) in sources.into_iter().enumerate() {
            trace.source_names.push(name);
            trace.add_data(Origin::Source(i), bytes);
        }
        trace
    }

    fn add_data(&mut self, origin: Origin, bytes: Vec<u8>) {
        for offset in (0..bytes.len().saturating_sub(KEY_BYTES - 1)).step_by(4) {
            let key: [u8; KEY_BYTES] = bytes[offset..offset + KEY_BYTES]
                .try_into()
                .expect("16-byte key");
            // Read-backs replace earlier entries, so results flow forward; among the
            // sources the first occurrence stays.
            if matches!(origin, Origin::Read(_)) || !self.index.contains_key(&key) {
                self.index.insert(key, (origin, offset));
            }
        }
        self.data.insert(origin, bytes);
    }

    fn buffer_id(&mut self, buffer: &wgpu::Buffer) -> usize {
        if let Some(&id) = self.buffers.get(buffer) {
            return id;
        }
        self.created(buffer, "external")
    }

    pub(crate) fn created(&mut self, buffer: &wgpu::Buffer, label: &str) -> usize {
        let id = self.buffer_list.len();
        self.buffer_list.push((label.to_string(), buffer.size()));
        self.buffers.insert(buffer.clone(), id);
        id
    }

    pub(crate) fn step(&mut self, name: &str) {
        self.events.push(json!({"op": "step", "name": name}));
    }

    pub(crate) fn note(&mut self, note: Value) {
        self.events.push(json!({"op": "note", "note": note}));
    }

    pub(crate) fn write(&mut self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        let id = self.buffer_id(buffer);
        let pieces = self.pieces(bytes);
        self.events
            .push(json!({"op": "write", "buffer": id, "offset": offset, "data": pieces}));
    }

    /// `bytes` as consecutive pieces: runs found in a source or read-back, and blob runs.
    fn pieces(&mut self, bytes: &[u8]) -> Vec<Value> {
        let mut pieces = Vec::new();
        let mut blob_start: Option<usize> = None;
        let mut pos = 0;
        while pos < bytes.len() {
            match self.longest_match(&bytes[pos..]) {
                Some((origin, at, len)) => {
                    if let Some(start) = blob_start.take() {
                        pieces.push(self.blob_piece(&bytes[start..pos]));
                    }
                    pieces.push(match origin {
                        Origin::Source(s) => {
                            json!({"source": self.source_names[s], "offset": at, "len": len})
                        }
                        Origin::Read(r) => json!({"read": r, "offset": at, "len": len}),
                    });
                    pos += len;
                }
                None => {
                    blob_start.get_or_insert(pos);
                    pos = (pos + 4).min(bytes.len());
                }
            }
        }
        if let Some(start) = blob_start {
            pieces.push(self.blob_piece(&bytes[start..]));
        }
        pieces
    }

    fn blob_piece(&mut self, bytes: &[u8]) -> Value {
        let at = self.blob.len();
        self.blob.extend_from_slice(bytes);
        json!({"blob": at, "len": bytes.len()})
    }

    /// The longest run at the start of `bytes` (whole 4-byte words, at least [`KEY_BYTES`])
    /// found where the index points.
    fn longest_match(&self, bytes: &[u8]) -> Option<(Origin, usize, usize)> {
        let key: [u8; KEY_BYTES] = bytes.get(..KEY_BYTES)?.try_into().ok()?;
        let (origin, at) = *self.index.get(&key)?;
        let data = &self.data[&origin][at..];
        let same = bytes
            .chunks(4)
            .zip(data.chunks(4))
            .take_while(|(a, b)| a == b && a.len() == 4)
            .count()
            * 4;
        (same >= KEY_BYTES).then_some((origin, at, same))
    }

    pub(crate) fn dispatch(
        &mut self,
        kernel: &Kernel,
        entry: &str,
        params: &Params,
        bindings: &[(u32, Bound<'_>)],
        grid: (u32, u32),
    ) {
        let words: &[u32] = bytemuck::cast_slice(std::slice::from_ref(params));
        let bound: Vec<Value> = bindings
            .iter()
            .map(|(binding, bound)| {
                let (offset, size) = bound.range.unwrap_or((0, 0));
                json!([binding, self.buffer_id(bound.buffer), offset, size])
            })
            .collect();
        let files: Vec<String> = kernel.files().into_iter().map(|(name, _)| name).collect();
        self.events.push(json!({
            "op": "dispatch",
            "kernel": kernel.name,
            "files": files,
            "entry": entry,
            "params": words,
            "bindings": bound,
            "grid": [grid.0, grid.1],
        }));
    }

    pub(crate) fn copy(
        &mut self,
        from: &wgpu::Buffer,
        from_offset: u64,
        to: &wgpu::Buffer,
        to_offset: u64,
        size: u64,
    ) {
        let (from, to) = (self.buffer_id(from), self.buffer_id(to));
        self.events.push(
            json!({"op": "copy", "from": from, "from_offset": from_offset,
            "to": to, "to_offset": to_offset, "size": size}),
        );
    }

    pub(crate) fn submit(&mut self) {
        self.events.push(json!({"op": "submit"}));
    }

    pub(crate) fn read(&mut self, buffer: &wgpu::Buffer, label: &str, words: &[u32]) {
        let id = self.buffer_id(buffer);
        let index = self.reads;
        self.reads += 1;
        self.events
            .push(json!({"op": "read", "buffer": id, "words": words.len(),
            "read": index, "label": label}));
        self.add_data(Origin::Read(index), bytemuck::cast_slice(words).to_vec());
    }

    /// The recorded events, in order (see the module docs for their fields).
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// The words of read-back `index`.
    pub fn read_words(&self, index: usize) -> Option<Vec<u32>> {
        self.data
            .get(&Origin::Read(index))
            .map(|bytes| bytemuck::pod_collect_to_vec(bytes))
    }

    /// The plan (JSON) and its blob of literal bytes.
    pub fn to_plan(&self) -> (Value, Vec<u8>) {
        let buffers: Vec<Value> = self
            .buffer_list
            .iter()
            .map(|(label, size)| json!({"label": label, "size": size}))
            .collect();
        (
            json!({"version": 1, "buffers": buffers, "events": self.events}),
            self.blob.clone(),
        )
    }
}
