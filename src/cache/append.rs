//! Filling a [`KvCache`]: sinks, the exact window, and whole groups quantized once as they
//! leave it; the STP prefill; fp16 chunks.

use super::{Chunk, KvCache, CHUNK_GROUPS};
use crate::error::{Result, VidkvError};
use crate::gpu::attention::upload_planes;
use crate::gpu::incremental::{
    copy_into_window, freeze_split, grow_planes, repack_window, resized_window, shift_window,
    write_exact, ChunkWords, ExactStore, GroupFlush, Growth, LayerStates, RowSpan, Rows, ROW_ALIGN,
};
use crate::tensor::Tensor;

impl KvCache {
    /// Fills an empty layer with a prompt's keys and values (`[kv_heads, tokens, head_dim]`
    /// row-major f32): the complete groups beyond the residual window are quantized at once.
    pub fn prefill(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        if self.len(layer) != 0 {
            return Err(VidkvError::InvalidConfig(format!(
                "prefill needs an empty layer; layer {layer} holds {} tokens (use append)",
                self.len(layer)
            )));
        }
        self.append(layer, k, v)
    }

    /// Appends any number of tokens (`[kv_heads, n, head_dim]` row-major f32) to `layer`.
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        self.check_layer(layer)?;
        let n = super::appended_tokens(self.shape, k, v)?;
        if n == 0 {
            return Ok(());
        }
        if self.len(layer) == 0 && !self.protected.is_empty() && !self.config.is_fp16() {
            let plan = self.config.plan(n);
            if plan.quantized > 0 {
                return self.prefill_protected(layer, k, v, n);
            }
        }
        self.append_rows(layer, Rows::Host(k), Rows::Host(v), n)
    }

    /// Appends `tokens` tokens that already live on the GPU: `k` and `v` hold
    /// `[kv_heads, tokens, head_dim]` f32 from their first byte (a host application on wgpu
    /// never round-trips them through the CPU). The values are the caller's to keep finite
    /// and within ±65504; they are not read back to check. With protected (STP) tokens, a
    /// prefill from buffers is read back once to pack its STP lists.
    pub fn append_buffers(
        &mut self,
        layer: usize,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        tokens: usize,
    ) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        self.check_layer(layer)?;
        let bytes = (h * tokens * d * 4) as u64;
        if k.size() < bytes || v.size() < bytes {
            return Err(VidkvError::ShapeMismatch {
                tensor: "k/v buffers".into(),
                detail: format!(
                    "{tokens} tokens of [{h} KV heads, {d}] f32 need {bytes} bytes; the buffers hold {} and {}",
                    k.size(),
                    v.size()
                ),
            });
        }
        if tokens == 0 {
            return Ok(());
        }
        if self.len(layer) == 0 && !self.protected.is_empty() && !self.config.is_fp16() {
            let plan = self.config.plan(tokens);
            if plan.quantized > 0 {
                let words = h * tokens * d;
                let read = |b: &wgpu::Buffer| -> Result<Vec<f32>> {
                    Ok(self
                        .gpu
                        .read_words(b, words)?
                        .into_iter()
                        .map(f32::from_bits)
                        .collect())
                };
                let (k, v) = (read(k)?, read(v)?);
                return self.append(layer, &k, &v);
            }
        }
        self.append_rows(layer, Rows::Gpu(k), Rows::Gpu(v), tokens)
    }

    /// Appends `n` rows per head: sinks first, then the window, quantizing whole groups
    /// that leave the window.
    fn append_rows(&mut self, layer: usize, k: Rows<'_>, v: Rows<'_>, n: usize) -> Result<()> {
        // The quantization kernels use the context's pooled buffers.
        let gpu = self.gpu.clone();
        let _exclusive = gpu.exclusive();
        if self.config.is_fp16() {
            return self.append_exact(layer, k, v, n);
        }
        let (heads, g) = (self.heads(), self.config.group_size);
        let gpu = self.gpu.clone();
        let ctx = &gpu;
        let (sinks, residual) = (self.config.sinks, self.config.residual);
        let tokens = self.layers[layer].tokens;
        let to_sinks = n.min(sinks.saturating_sub(tokens));
        if to_sinks > 0 {
            self.ensure_exact_rows(layer)?;
            let store = self.layers[layer].exact.as_ref().expect("just made");
            let span = RowSpan {
                k,
                v,
                n,
                from: 0,
                count: to_sinks,
            };
            for head in 0..heads.count {
                write_exact(ctx, store, heads, (head, tokens), span)?;
            }
        }
        let arriving = n - to_sinks;
        let before = self.layers[layer].window_rows;
        self.ensure_window(layer, before + arriving)?;
        let window = self.layers[layer].window_f32.as_ref().expect("ensured");
        let span = RowSpan {
            k,
            v,
            n,
            from: to_sinks,
            count: arriving,
        };
        copy_into_window(ctx, window, heads, before, span)?;
        let state = &mut self.layers[layer];
        state.tokens += n;
        state.window_rows += arriving;
        let rows = state.window_rows;
        if rows >= residual + g {
            let groups = (rows - residual) / g;
            self.quantize_window(layer, groups)?;
            self.shift_window(layer, groups * g)?;
            self.shrink_window(layer)?;
            return self.repack_window(layer);
        }
        self.pack_arrivals(layer, before, span)
    }

    /// Writes the f16 window rows of the tokens just appended to a window that did not
    /// shift (rows `before..` of every head), rather than repacking the whole window: host
    /// rows are converted on the host and written (no dispatch), GPU rows packed from the
    /// f32 window (two dispatches).
    fn pack_arrivals(&mut self, layer: usize, before: usize, span: RowSpan<'_>) -> Result<()> {
        let (heads, at_row) = (self.heads(), self.sink_rows());
        let gpu = self.gpu.clone();
        let ctx = &gpu;
        self.ensure_exact_rows(layer)?;
        if span.count == 0 {
            return Ok(());
        }
        let state = &self.layers[layer];
        let store = state.exact.as_ref().expect("just ensured");
        if let (Rows::Host(_), Rows::Host(_)) = (span.k, span.v) {
            for head in 0..heads.count {
                write_exact(ctx, store, heads, (head, at_row + before), span)?;
            }
            return Ok(());
        }
        let window = state.window_f32.as_ref().expect("rows were just copied in");
        let rows = before..before + span.count;
        repack_window(ctx, window, (store, at_row), heads, rows)
    }

    /// Makes the f16 rows that attention reads (the sinks, then the window), if the layer
    /// has none yet.
    pub(super) fn ensure_exact_rows(&mut self, layer: usize) -> Result<()> {
        if self.layers[layer].exact.is_none() {
            let capacity = self.sink_rows() + self.window_floor();
            self.layers[layer].exact = Some(ExactStore::new(&self.gpu, self.heads(), capacity)?);
        }
        Ok(())
    }

    /// Grows the f32 window of `layer` to hold `rows` rows per head (old rows are copied).
    pub(super) fn ensure_window(&mut self, layer: usize, rows: usize) -> Result<()> {
        let (floor, heads) = (self.window_floor(), self.heads());
        let state = &mut self.layers[layer];
        let current = state.window_f32.as_ref().map_or(0, |w| w.capacity);
        if rows <= current {
            return Ok(());
        }
        let capacity = rows.max(2 * current).max(floor).next_multiple_of(ROW_ALIGN);
        let grown = resized_window(
            &self.gpu,
            state.window_f32.as_ref(),
            state.window_rows,
            heads,
            capacity,
        )?;
        state.window_f32 = Some(grown);
        Ok(())
    }

    /// Gives the f32 window back its usual size (the residual and a group) once a large
    /// append, a prefill, has been quantized out of it: the rows a prompt brought through
    /// the window would otherwise stay allocated (f32, four times the f16 cache they came
    /// to) for the cache's life.
    fn shrink_window(&mut self, layer: usize) -> Result<()> {
        let (floor, heads) = (self.window_floor(), self.heads());
        let state = &mut self.layers[layer];
        let Some(window) = &state.window_f32 else {
            return Ok(());
        };
        let needed = floor.max(state.window_rows.next_multiple_of(ROW_ALIGN));
        if window.capacity > 2 * needed {
            let shrunk = resized_window(&self.gpu, Some(window), state.window_rows, heads, needed)?;
            state.window_f32 = Some(shrunk);
        }
        Ok(())
    }

    /// Drops the first `rows` rows of the window (they were quantized), moving the rest to
    /// the front.
    fn shift_window(&mut self, layer: usize, rows: usize) -> Result<()> {
        let heads = self.heads();
        let state = &mut self.layers[layer];
        let window = state.window_f32.as_ref().expect("a window with rows");
        shift_window(&self.gpu, window, heads, state.window_rows, rows)?;
        state.window_rows -= rows;
        Ok(())
    }

    /// Rewrites the f16 window that attention reads from the f32 window.
    pub(super) fn repack_window(&mut self, layer: usize) -> Result<()> {
        let (heads, at_row) = (self.heads(), self.sink_rows());
        let gpu = self.gpu.clone();
        let ctx = &gpu;
        self.ensure_exact_rows(layer)?;
        let state = &mut self.layers[layer];
        if state.window_rows == 0 {
            return Ok(());
        }
        let window = state.window_f32.as_ref().expect("a window with rows");
        let store = state.exact.as_ref().expect("just made");
        repack_window(ctx, window, (store, at_row), heads, 0..state.window_rows)
    }

    /// A prefill with protected tokens: its quantized part is packed with STP lists.
    fn prefill_protected(&mut self, layer: usize, k: &[f32], v: &[f32], n: usize) -> Result<()> {
        let heads = self.heads();
        let gpu = self.gpu.clone();
        let ctx = &gpu;
        let plan = self.config.plan(n);
        let dims = vec![1, heads.count, n, heads.dim];
        let packed = crate::gpu::quantize::quantize_cache(
            ctx,
            &Tensor::new("k", dims.clone(), k.to_vec())?,
            &Tensor::new("v", dims, v.to_vec())?,
            &self.config,
            // Positions beyond the prefill are never protected (later tokens never are).
            &self
                .protected
                .iter()
                .copied()
                .filter(|&p| (p as usize) < n)
                .collect::<Vec<u32>>(),
        )?;
        let (layout, planes) = upload_planes(
            ctx,
            &packed.heads,
            &packed.protected,
            self.config.group_size,
        )?;
        let planes = planes.expect("a quantized preset with quantized tokens has planes");
        let _exclusive = ctx.exclusive();
        let (k, v) = (Rows::Host(k), Rows::Host(v));
        if plan.sinks > 0 {
            self.ensure_exact_rows(layer)?;
            let store = self.layers[layer].exact.as_ref().expect("just made");
            let span = RowSpan {
                k,
                v,
                n,
                from: 0,
                count: plan.sinks,
            };
            for head in 0..heads.count {
                write_exact(ctx, store, heads, (head, 0), span)?;
            }
        }
        let tail = plan.tail();
        self.ensure_window(layer, tail)?;
        let window = self.layers[layer].window_f32.as_ref().expect("ensured");
        let span = RowSpan {
            k,
            v,
            n,
            from: plan.quantized_end(),
            count: tail,
        };
        copy_into_window(ctx, window, heads, 0, span)?;
        self.layers[layer].window_rows = tail;
        self.repack_window(layer)?;
        let state = &mut self.layers[layer];
        state.layout = Some(layout);
        state.states = LayerStates::of_planes(&planes);
        state.quantized = plan.quantized;
        state.prefill = Some((
            Chunk {
                start: plan.quantized_start(),
                groups: plan.quantized / self.config.group_size,
                capacity: plan.quantized / self.config.group_size,
                growable: false,
                planes,
            },
            packed.protected.len(),
        ));
        state.tokens = n;
        self.groups_quantized += (plan.quantized / self.config.group_size) as u64;
        Ok(())
    }

    /// Appends to an fp16 cache: every token goes into the layer's exact store, grown as it
    /// fills (a new store only where a grown one would pass the binding limit).
    fn append_exact(&mut self, layer: usize, k: Rows<'_>, v: Rows<'_>, n: usize) -> Result<()> {
        let heads = self.heads();
        let gpu = self.gpu.clone();
        let ctx = &gpu;
        let mut done = 0;
        while done < n {
            let needed = n - done;
            let chunks = &mut self.layers[layer].exact_chunks;
            if chunks
                .last()
                .is_none_or(|(store, used)| *used == store.capacity)
            {
                let grown = chunks
                    .last()
                    .and_then(|(store, _)| store.growth(ctx, heads, needed));
                match (chunks.last_mut(), grown) {
                    (Some((store, used)), Some(to)) => {
                        *store = store.grown(ctx, heads, *used, to)?
                    }
                    _ => chunks.push((ExactStore::sized_for(ctx, heads, needed)?, 0)),
                }
            }
            let (store, used) = self.layers[layer].exact_chunks.last().expect("just made");
            let take = (store.capacity - *used).min(needed);
            let span = RowSpan {
                k,
                v,
                n,
                from: done,
                count: take,
            };
            for head in 0..heads.count {
                write_exact(ctx, store, heads, (head, *used), span)?;
            }
            self.layers[layer]
                .exact_chunks
                .last_mut()
                .expect("present")
                .1 += take;
            done += take;
        }
        self.layers[layer].tokens += n;
        Ok(())
    }

    /// Quantizes the oldest `groups` groups of the window of `layer` into its chunks.
    fn quantize_window(&mut self, layer: usize, groups: usize) -> Result<()> {
        let heads = self.heads();
        let g = self.config.group_size;
        let gpu = self.gpu.clone();
        let ctx = &gpu;
        if self.layers[layer].layout.is_none() {
            let window = self.layers[layer]
                .window_f32
                .as_ref()
                .expect("the first groups come from the window");
            let mut layout = freeze_split(ctx, &self.config, window, heads, groups * g)?;
            let states = LayerStates::fit(ctx, &self.config, window, heads, groups * g)?;
            layout.rotated = states.keys.clone();
            self.layers[layer].layout = Some(layout);
            self.layers[layer].states = states;
        }
        let mut done = 0;
        while done < groups {
            self.make_room(layer, groups - done)?;
            let state = &self.layers[layer];
            let chunk = state.chunks.last().expect("room was made");
            // At most a chunk step per flush, the sizes the kernels' scratch is sized for.
            let take = (chunk.capacity - chunk.groups)
                .min(groups - done)
                .min(CHUNK_GROUPS);
            GroupFlush {
                config: &self.config,
                heads,
                window: state
                    .window_f32
                    .as_ref()
                    .expect("groups come from the window"),
                first_row: done * g,
                planes: &chunk.planes,
                words: &ChunkWords::of(&self.config, heads.dim, chunk.capacity),
                filled: chunk.groups,
                take,
                layout: state.layout.as_ref().expect("frozen above"),
                identity: &self.identity,
            }
            .run(ctx)?;
            let state = &mut self.layers[layer];
            state.chunks.last_mut().expect("present").groups += take;
            state.quantized += take * g;
            done += take;
        }
        self.groups_quantized += groups as u64;
        Ok(())
    }

    /// Makes room in the last chunk of `layer` for at least one of `needed` groups: a first
    /// chunk sized for them, or the full last chunk grown (re-strided on the GPU, see
    /// [`grow_planes`]), or a new chunk after a run that cannot grow (a loaded run, or
    /// planes at the binding limit).
    fn make_room(&mut self, layer: usize, needed: usize) -> Result<()> {
        let heads = self.heads();
        let (config, gpu) = (&self.config, &self.gpu);
        let max = gpu.max_binding_bytes();
        let fits = |groups: usize| {
            ChunkWords::of(config, heads.dim, groups).largest_bytes(heads.count) <= max
        };
        let state = &mut self.layers[layer];
        if let Some(chunk) = state.chunks.last_mut() {
            if chunk.groups < chunk.capacity {
                return Ok(());
            }
            let grown = Growth::CHUNK.capacity(chunk.capacity, needed, fits);
            if let (true, Some(to)) = (chunk.growable, grown) {
                let sizes = (chunk.capacity, chunk.groups, to);
                chunk.planes =
                    grow_planes(gpu, (config, heads, &state.states), &chunk.planes, sizes)?;
                chunk.capacity = to;
                return Ok(());
            }
        }
        let capacity = Growth::CHUNK.initial(needed, fits);
        let planes = ChunkWords::of(config, heads.dim, capacity).new_planes(
            gpu,
            config,
            heads,
            &state.states,
        )?;
        state.chunks.push(Chunk {
            start: config.sinks + state.quantized,
            groups: 0,
            capacity,
            growable: true,
            planes,
        });
        Ok(())
    }
}
