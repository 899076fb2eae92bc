//! A buffer bound to a kernel, whole or by byte range.

/// A buffer bound to a kernel: whole, or a byte range (offset aligned to the device's
/// `min_storage_buffer_offset_alignment`).
#[derive(Clone, Copy)]
pub struct Bound<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub range: Option<(u64, u64)>,
}

impl<'a> Bound<'a> {
    /// `size` bytes of `buffer` from `offset`.
    pub fn range(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        Bound {
            buffer,
            range: Some((offset, size)),
        }
    }

    pub(super) fn resource(&self) -> wgpu::BindingResource<'a> {
        match self.range {
            None => self.buffer.as_entire_binding(),
            Some((offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.buffer,
                offset,
                size: std::num::NonZeroU64::new(size),
            }),
        }
    }
}

impl<'a> From<&'a wgpu::Buffer> for Bound<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Bound {
            buffer,
            range: None,
        }
    }
}
