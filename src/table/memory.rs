//! Where a table's words live: a zeroed heap allocation, or (for shared
//! engines) a range of a file mapping that outlives the table.

use crate::sync::Atomic128;
use crate::Error;

/// A table's memory: `len` zero-initialised (or previously used) units.
pub(crate) enum Memory {
    /// Owned heap memory.
    Heap(Box<[Atomic128]>),
    /// Part of a shared mapping kept alive by `owner`.
    #[allow(dead_code)]
    Mapped {
        ptr: *const Atomic128,
        len: usize,
        owner: std::sync::Arc<dyn Send + Sync>,
    },
}

// SAFETY:
// - `Heap` is a `Box` of `Sync` atomics;
// - `Mapped` points into a mapping owned by `owner` (which is `Send + Sync`
//   and kept alive as long as this value), and the units are atomics only.
unsafe impl Send for Memory {}
// SAFETY: as for `Send`: shared access only ever goes through atomic operations.
unsafe impl Sync for Memory {}

impl Memory {
    /// `len` zeroed units on the heap, allocated once.
    pub fn heap(len: usize) -> Result<Memory, Error> {
        #[cfg(not(loom))]
        {
            use std::alloc::{alloc_zeroed, Layout};
            if len == 0 {
                return Ok(Memory::Heap(Box::new([])));
            }
            let layout = Layout::array::<Atomic128>(len)
                .map_err(|_| Error::OutOfMemory(format!("{len} table words")))?;
            // SAFETY:
            // - `layout` has non-zero size (len > 0);
            // - all-zero bytes are a valid `Atomic128` (an `UnsafeCell<u128>`),
            //   so the zeroed allocation holds `len` initialised values;
            // - the pointer came from the global allocator with this exact
            //   layout, which is what `Box<[Atomic128]>` frees it with.
            unsafe {
                let p = alloc_zeroed(layout) as *mut Atomic128;
                if p.is_null() {
                    return Err(Error::OutOfMemory(format!(
                        "{} bytes for a table",
                        layout.size()
                    )));
                }
                Ok(Memory::Heap(Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, len))))
            }
        }
        #[cfg(loom)]
        {
            Ok(Memory::Heap((0..len).map(|_| Atomic128::new(0)).collect()))
        }
    }

    #[inline(always)]
    pub fn units(&self) -> &[Atomic128] {
        match self {
            Memory::Heap(b) => b,
            // SAFETY:
            // - `ptr..ptr+len` lies inside the mapping owned by `owner`, which
            //   this value keeps alive; the mapping is 16-byte aligned and
            //   shared units are only accessed atomically.
            Memory::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}
