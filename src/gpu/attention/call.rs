//! One attention call recorded: [`CallPlan::new`] sizes the call once (splits, tiles of
//! query rows, the scratch, the fused dispatches and the exact segments riding in them),
//! then [`record_call`] records and submits it tile by tile — the query pass where a
//! segment needs it, one dispatch (or three passes) per segment, the combine.

use std::sync::Arc;

use super::planes::{LayerGeometry, PackedPlanes, SegmentData, SegmentRef};
use super::rotated::{RefinementPlanes, RefinementWeights};
use super::rotated_groups::{self, FusedBuffers, FusedExact, GroupPlanes, RiderPlan, SharedStates};
use super::split::{ExactSplit, RotatedTokensSplit, SignsTritsSplit, SplitInputs, TwoBitSplit};
use super::{
    record_scores, record_values, rotated, row_blocks, Call, Kernels, Scratch, STATS_ALIGN,
};
use crate::error::Result;
use crate::gpu::batch::Batch;
use crate::gpu::context::GpuContext;
use crate::gpu::params::Params;
use crate::gpu::shaders::{ATTENTION_COMBINE, ATTENTION_QUERIES, ATTENTION_SOFTMAX};

/// Records and submits `call` tile by tile (one submission per tile of query rows), reading
/// the query from `q_buffer` and writing the output to `output`; the caller holds the
/// context's exclusive guard.
pub(super) fn record_call(
    ctx: &GpuContext,
    call: &Call<'_, '_>,
    q_buffer: &wgpu::Buffer,
    output: &wgpu::Buffer,
) -> Result<()> {
    let plan = CallPlan::new(ctx, call)?;
    let total_rows = plan.base.rows_per_head as usize * call.layer.kv_heads;
    let mut row_offset = 0;
    while row_offset < total_rows {
        let rows = plan.tile_rows.min(total_rows - row_offset);
        let tile = Params {
            row_offset: row_offset as u32,
            tile_rows: rows as u32,
            ..plan.base
        };
        let mut batch = ctx.batch();
        plan.record_tile(&mut batch, (tile, rows), q_buffer, output);
        batch.submit()?;
        row_offset += rows;
    }
    Ok(())
}

/// What every tile of a call records, sized once.
struct CallPlan<'c, 'a, 'b> {
    ctx: &'c GpuContext,
    call: &'c Call<'a, 'b>,
    subgroups: bool,
    /// Whether the split kernels load exact rows as f16 (the shader-f16 fast path).
    f16_loads: bool,
    split_tokens: usize,
    /// Each segment's splits before it.
    split_offsets: Vec<usize>,
    /// Query rows per tile (whole runs of the rows that share a KV head and a position).
    tile_rows: usize,
    /// The parameters every dispatch of the call shares.
    base: Params,
    /// The rotated split dispatches' shared states and their uniform buffer, if any
    /// segment takes one.
    shared: Option<(SharedStates<'a>, Arc<wgpu::Buffer>)>,
    /// How each segment is recorded.
    routes: Vec<Route<'a>>,
    riders: RiderPlan<'a>,
    /// Whether some segment goes through the separate passes, which read the query pass.
    query_pass: bool,
    visible: Arc<wgpu::Buffer>,
    scratch: Scratch,
}

impl<'c, 'a, 'b> CallPlan<'c, 'a, 'b> {
    fn new(ctx: &'c GpuContext, call: &'c Call<'a, 'b>) -> Result<Self> {
        let (layer, segments) = (call.layer, call.segments);
        let split_tokens = ctx.split_tokens();
        let d = layer.head_dim;
        let gqa = call.q_heads / layer.kv_heads;
        let rows_per_head = gqa * call.visible.len();
        let total_rows = rows_per_head * layer.kv_heads;
        let mut split_offsets = Vec::with_capacity(segments.len());
        let mut total_splits = 0;
        for segment in segments {
            split_offsets.push(total_splits);
            total_splits += segment.splits(split_tokens);
        }
        // Score rows are padded to a multiple of 4 floats (`score_stride` in the shaders).
        let longest = segments
            .iter()
            .map(|s| s.len.next_multiple_of(4))
            .max()
            .unwrap_or(4);
        // A row's split outputs and scores: its partial sums, its (m, l) pairs and the
        // separate passes' scores (one buffer, each region from an aligned offset).
        let per_row = ((longest + total_splits * (d + 2)) * 4) as u64;
        let tile_rows = ((ctx.max_data_bytes().saturating_sub(2 * STATS_ALIGN) / per_row) as usize)
            .clamp(1, total_rows)
            .min(ctx.max_workgroups_per_dimension() as usize);
        let tile_rows = (tile_rows / gqa).max(1) * gqa;
        let shared = match SharedStates::plan(ctx, call) {
            Some(states) => Some((states, SharedStates::states_uniform(ctx)?)),
            None => None,
        };
        // The fused kernel binds the visible ranges as a uniform of fixed size.
        let visible_floor = if shared.is_some() {
            rotated_groups::VISIBLE_UNIFORM_BYTES
        } else {
            0
        };
        let visible_flat: Vec<u32> = call.visible.iter().flat_map(|&(lo, hi)| [lo, hi]).collect();
        let visible = ctx.buffer(
            "attention visible",
            (visible_flat.len() * 4).max(visible_floor) as u64,
        )?;
        ctx.write(&visible, 0, &visible_flat);
        let routes: Vec<Route<'a>> = segments
            .iter()
            .map(|s| Route::of(call, shared.as_ref(), s))
            .collect();
        // Segments whose one dispatch may carry exact riders: codes across tokens, 2-bit,
        // and exact segments themselves (where no other carries them).
        let hosts: Vec<bool> = routes
            .iter()
            .map(|r| matches!(r, Route::TwoBit(_) | Route::Fused { .. } | Route::Exact))
            .collect();
        let riders = RiderPlan::new(ctx, segments, &split_offsets, &hosts)?;
        // The fused kernels scale (and rotate) their rows themselves: the queries pass runs
        // only for segments that go through the separate passes or read the planar query.
        let query_pass = (0..segments.len()).any(|i| {
            !riders.riding[i]
                && matches!(
                    routes[i],
                    Route::Passes | Route::SignsTrits(_) | Route::RotatedTokens { .. }
                )
        });
        let partial_bytes = (tile_rows * total_splits * d * 4) as u64;
        let stats_offset = partial_bytes.next_multiple_of(STATS_ALIGN);
        let stats_bytes = (tile_rows * total_splits * 8) as u64;
        let scores_offset = (stats_offset + stats_bytes).next_multiple_of(STATS_ALIGN);
        let scores_bytes = (tile_rows * longest * 4) as u64;
        let scratch = Scratch {
            natural: ctx.buffer("attention q natural", (tile_rows * d * 4) as u64)?,
            planar: ctx.buffer(
                "attention q planar",
                Scratch::planar_bytes((d * 4) as u64, tile_rows),
            )?,
            row_bytes: (d * 4) as u64,
            partial: ctx.buffer("attention split outputs", scores_offset + scores_bytes)?,
            partial_bytes,
            stats: (stats_offset, stats_bytes),
            scores: (scores_offset, scores_bytes),
            unused: ctx.buffer("unused binding", 16)?,
        };
        let base = Params {
            width: d as u32,
            group_size: layer.group_size as u32,
            outliers: layer.layout.outliers as u32,
            dft_len: layer.layout.normals as u32,
            scale_rule: u32::from(layer.layout.fft),
            scale: 1.0 / (d as f32).sqrt(),
            kv_heads: layer.kv_heads as u32,
            rows_per_head: rows_per_head as u32,
            queries: call.visible.len() as u32,
            total_splits: total_splits as u32,
            split_size: split_tokens as u32,
            stats_offset: (stats_offset / 4) as u32,
            ..Default::default()
        };
        Ok(CallPlan {
            ctx,
            call,
            subgroups: call.kernels == Kernels::Fastest && ctx.uses_subgroups(),
            f16_loads: call.kernels == Kernels::Fastest && ctx.uses_f16_loads(),
            split_tokens,
            split_offsets,
            tile_rows,
            base,
            shared,
            routes,
            riders,
            query_pass,
            visible,
            scratch,
        })
    }

    /// Records the tile `tile` of `rows` query rows: the fused dispatches' states, the query
    /// pass, every segment that does not ride in another's dispatch, and the combine.
    fn record_tile(
        &self,
        batch: &mut Batch<'_>,
        (tile, rows): (Params, usize),
        q_buffer: &wgpu::Buffer,
        output: &wgpu::Buffer,
    ) {
        if let Some((shared, states)) = &self.shared {
            shared.record_states(batch, states);
        }
        if self.query_pass {
            self.record_queries(batch, (tile, rows), q_buffer);
        }
        for i in 0..self.call.segments.len() {
            if !self.riders.riding[i] {
                self.record_segment(batch, i, (tile, rows), q_buffer);
            }
        }
        batch.dispatch_bound(
            &ATTENTION_COMBINE,
            "main",
            Params {
                invocations: (rows * self.call.layer.head_dim) as u32,
                ..tile
            },
            &[
                self.scratch.stats(),
                self.scratch.partial_sums(),
                output.into(),
            ],
        );
    }

    /// The query pass: rotated rows and their centre terms for rotated keys, else the rows
    /// scaled and in plane order.
    fn record_queries(
        &self,
        batch: &mut Batch<'_>,
        (tile, rows): (Params, usize),
        q: &wgpu::Buffer,
    ) {
        let layout = self.call.layer.layout;
        let scratch = &self.scratch;
        match &layout.rotated {
            Some(states) => rotated::record_queries(batch, states, q, tile, rows, scratch),
            None => batch.dispatch(
                &ATTENTION_QUERIES,
                "main",
                Params {
                    invocations: (rows * self.call.layer.head_dim) as u32,
                    ..tile
                },
                &[
                    q,
                    &layout.order,
                    &layout.twiddles,
                    &scratch.natural,
                    &scratch.planar,
                ],
            ),
        }
    }

    /// Segment `i` for the tile: one `attention_split` dispatch (exact rows, carrying
    /// themselves and the next exact segment of their buffers; 2-bit codes with their
    /// riders; the paper format after the queries pass), one fused dispatch with its riders
    /// (codes across tokens), or the three passes (and the STP refinements' pass).
    fn record_segment(
        &self,
        batch: &mut Batch<'_>,
        i: usize,
        (tile, rows): (Params, usize),
        q_buffer: &wgpu::Buffer,
    ) {
        let segment = &self.call.segments[i];
        let (scratch, split_tokens) = (&self.scratch, self.split_tokens);
        let splits = segment.splits(split_tokens);
        let seg = Params {
            segment_start: segment.start as u32,
            segment_len: segment.len as u32,
            split_offset: self.split_offsets[i] as u32,
            ..tile
        };
        let grid = (splits as u32, row_blocks(seg, rows));
        let inputs = SplitInputs {
            queries: q_buffer,
            visible: &self.visible,
            f16_loads: self.f16_loads,
        };
        match &self.routes[i] {
            Route::Exact => {
                let (riders, splits) = self.riders_of(i);
                let grid = (splits as u32, grid.1);
                ExactSplit::record_riders(batch, (seg, grid), &inputs, &riders, scratch);
            }
            Route::SignsTrits(split) => {
                let inputs = SplitInputs {
                    queries: &scratch.planar,
                    ..inputs
                };
                split.record(batch, (seg, grid), &inputs, scratch);
            }
            Route::RotatedTokens { split, states } => {
                let inputs = SplitInputs {
                    queries: &scratch.planar,
                    ..inputs
                };
                split.record(batch, (seg, grid), &inputs, states, scratch);
                if let Some(refinement) = split.refinement {
                    self.record_refinements(batch, refinement, (seg, rows), splits);
                }
            }
            Route::TwoBit(two_bit) => {
                let (exact, riders) = self.riders_of(i);
                let grid = (grid.0 + riders as u32, grid.1);
                two_bit.record(batch, (seg, grid), &inputs, &exact, scratch);
            }
            Route::Fused {
                planes,
                states,
                refinement,
            } => {
                let (exact, riders) = self.riders_of(i);
                let d = self.call.layer.head_dim;
                // With refinements, the logits go to the separate passes' scores.
                let logits_at = refinement.map_or(0, |_| scratch.scores_index());
                rotated_groups::record_fused(
                    batch,
                    rotated_groups::fused_kernel(self.ctx, self.subgroups, d, planes.0.group_size),
                    *planes,
                    Params {
                        stp: logits_at,
                        ..seg
                    },
                    (grid.0 + riders as u32, grid.1),
                    &FusedBuffers {
                        queries: q_buffer,
                        visible: &self.visible,
                        states,
                        exact,
                    },
                    scratch,
                );
                if let Some(refinement) = refinement {
                    self.record_refinements(batch, refinement, (seg, rows), splits);
                }
            }
            Route::Passes => self.record_three_passes(batch, i, (seg, rows)),
        }
    }

    /// The exact segments riding in segment `i`'s dispatch (the `unused` buffer where none
    /// does) and the splits they add.
    fn riders_of(&self, i: usize) -> (FusedExact<'_>, usize) {
        let rider = self.riders.carried[i].as_ref();
        let unused = &self.scratch.unused;
        let exact = FusedExact {
            keys: rider.map_or(unused, |r| r.keys),
            values: rider.map_or(unused, |r| r.values),
            rows_per_head: rider.map_or(0, |r| r.rows_per_head),
            records: &self.riders.records,
            record: i as u64 * rotated_groups::EXACT_RECORD_BYTES,
        };
        let splits = rider.map_or(0, |r| r.splits(self.call.segments, self.split_tokens));
        (exact, splits)
    }

    /// Scores, the split softmax and the value sums of segment `i` (and its STP
    /// refinements).
    fn record_three_passes(&self, batch: &mut Batch<'_>, i: usize, (seg, rows): (Params, usize)) {
        let segment = &self.call.segments[i];
        let layer: &LayerGeometry<'_> = self.call.layer;
        let scratch = &self.scratch;
        let splits = segment.splits(self.split_tokens);
        record_scores(batch, layer, segment, seg, rows, scratch);
        self.record_softmax(batch, (seg, rows), splits);
        record_values(self.subgroups, batch, segment, seg, rows, scratch);
        if let SegmentData::Packed(PackedPlanes {
            refinement: Some(refinement),
            ..
        }) = &segment.data
        {
            rotated::record_refinement(
                batch,
                refinement,
                (seg, RefinementWeights::Softmax),
                splits,
                rows,
                scratch,
            );
        }
    }

    /// After a fused or split dispatch that wrote the segment `seg`'s logits into the scores
    /// (and its splits' (m, l)): the STP refinements' Σ p·r̂, weighing the logits itself.
    fn record_refinements(
        &self,
        batch: &mut Batch<'_>,
        refinement: &RefinementPlanes,
        (seg, rows): (Params, usize),
        splits: usize,
    ) {
        rotated::record_refinement(
            batch,
            refinement,
            (seg, RefinementWeights::Logits),
            splits,
            rows,
            &self.scratch,
        );
    }

    /// The split softmax of the segment `seg` (its `splits`) for the tile's `rows` rows: the
    /// scores' logits into weights, each split's (m, l).
    fn record_softmax(&self, batch: &mut Batch<'_>, (seg, rows): (Params, usize), splits: usize) {
        batch.dispatch_bound(
            &ATTENTION_SOFTMAX,
            "main",
            Params {
                invocations: (rows * splits) as u32,
                ..seg
            },
            &[
                (&*self.visible).into(),
                self.scratch.scores(),
                self.scratch.stats(),
            ],
        );
    }
}

/// How a segment of a call is recorded, decided once per call.
enum Route<'a> {
    /// One `attention_split` dispatch over its exact rows and those of the next exact
    /// segment of its buffers that rides nowhere else.
    Exact,
    /// One 2-bit split dispatch, with the exact segments riding in it.
    TwoBit(TwoBitSplit<'a>),
    /// One split dispatch over the VidKV paper's format, after the query pass.
    SignsTrits(SignsTritsSplit<'a>),
    /// One split dispatch over rotated per-token codes, after the query pass (its rotation),
    /// with the call's states uniform; with STP refinements, it also writes its logits,
    /// which the refinement pass weighs.
    RotatedTokens {
        split: RotatedTokensSplit<'a>,
        states: Arc<wgpu::Buffer>,
    },
    /// One fused codes-across-tokens dispatch (keys' and values' planes, the call's states
    /// uniform), with the exact segments riding in it; with STP refinements, it also writes
    /// its logits, which the refinement pass weighs.
    Fused {
        planes: (&'a GroupPlanes, &'a GroupPlanes),
        states: Arc<wgpu::Buffer>,
        refinement: Option<&'a RefinementPlanes>,
    },
    /// The separate passes (after the query pass), for [`Kernels::ThreePass`] and the
    /// formats no fused kernel reads.
    Passes,
}

impl<'a> Route<'a> {
    fn of(
        call: &Call<'_, '_>,
        shared: Option<&(SharedStates<'a>, Arc<wgpu::Buffer>)>,
        segment: &SegmentRef<'a>,
    ) -> Self {
        if let Some((shared, states)) = shared {
            if let Some(planes) = shared.takes(segment) {
                let refinement = match &segment.data {
                    SegmentData::Packed(planes) => planes.refinement.as_ref(),
                    SegmentData::Exact { .. } => None,
                };
                return Route::Fused {
                    planes,
                    states: Arc::clone(states),
                    refinement,
                };
            }
            if let Some(split) = shared.takes_tokens(call.layer, segment) {
                return Route::RotatedTokens {
                    split,
                    states: Arc::clone(states),
                };
            }
        }
        if call.kernels == Kernels::ThreePass {
            return Route::Passes;
        }
        ExactSplit::of(segment)
            .map(|_| Route::Exact)
            .or_else(|| TwoBitSplit::of(call.layer, segment).map(Route::TwoBit))
            .or_else(|| SignsTritsSplit::of(call.layer, segment).map(Route::SignsTrits))
            .unwrap_or(Route::Passes)
    }
}
