//! Where a policy's words live: a zeroed heap allocation, or (for shared
//! engines) a range of a file mapping that outlives the table.

use crate::sync::Atomic128;
use crate::Error;

/// Alignment of heap regions: a policy's counters are 128-byte lines.
const HEAP_ALIGN: usize = 128;

/// A region of `len` zero-initialised (or previously used) units at `ptr`,
/// kept alive by its owner. Every region is read the same way (`units` is
/// not a `match`: it sits on the hot path).
pub(crate) struct Memory {
    ptr: *const Atomic128,
    len: usize,
    _owner: Owner,
}

/// What keeps a region's memory alive, and frees it on drop.
enum Owner {
    /// From the allocator, 128-byte aligned, with `heap_layout(len)`.
    #[cfg(not(loom))]
    Alloc,
    /// An anonymous mapping of `map_len` bytes at `base` (large tables on
    /// Linux: huge pages), 2 MiB-aligned at `ptr`.
    #[cfg(not(loom))]
    Anon { base: usize, map_len: usize },
    /// Loom atomics cannot be zero-initialised: built one by one.
    #[cfg(loom)]
    Boxed { _units: Box<[Atomic128]> },
    /// Part of a shared file's mapping.
    Mapped {
        _map: std::sync::Arc<crate::shm::Mapping>,
    },
}

// SAFETY:
// - `ptr..ptr+len` is owned by `_owner` (an allocation, an anonymous
//   mapping, a box) or lies in the shared mapping it keeps alive, as long
//   as this value; the units are atomics only.
unsafe impl Send for Memory {}
// SAFETY: as for `Send`: shared access only ever goes through atomic operations.
unsafe impl Sync for Memory {}

#[cfg(not(loom))]
fn heap_layout(len: usize) -> Result<std::alloc::Layout, Error> {
    len.checked_mul(std::mem::size_of::<Atomic128>())
        .and_then(|bytes| {
            std::alloc::Layout::from_size_align(bytes.max(HEAP_ALIGN), HEAP_ALIGN).ok()
        })
        .ok_or_else(|| Error::OutOfMemory(format!("{len} table words")))
}

/// A huge page (x86_64 and aarch64 with 4 KiB base pages).
#[cfg(all(not(loom), target_os = "linux"))]
const HUGE_PAGE: usize = 2 << 20;

/// `bytes` zeroed bytes of a private anonymous mapping, aligned to a huge
/// page and advised to use huge pages (Linux transparent huge pages, where
/// enabled for `madvise`), before any page is touched. A large table is
/// read at random: with 4 KiB pages nearly every check of a table far
/// larger than the TLB's reach also walks the page tables. Returns the
/// aligned start and the whole mapping (to unmap), or `None` if `mmap`
/// fails (the caller then takes the allocator's memory).
#[cfg(all(not(loom), target_os = "linux"))]
fn huge_mapping(bytes: usize) -> Option<(*mut Atomic128, (usize, usize))> {
    let map_len = bytes.checked_add(HUGE_PAGE)?;
    // SAFETY:
    // - an anonymous private mapping at an address of the kernel's choice
    //   aliases nothing; its pages read as zero until written.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let start = (base as usize).next_multiple_of(HUGE_PAGE);
    // SAFETY:
    // - `start..start + bytes` lies inside the mapping just made (at most
    //   HUGE_PAGE - 1 bytes past `base`) and is page-aligned;
    // - MADV_HUGEPAGE changes how the kernel backs those pages, never their
    //   contents; an error (THP disabled) is ignored: it is a hint.
    unsafe {
        libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
    }
    Some((start as *mut Atomic128, (base as usize, map_len)))
}

impl Memory {
    /// `len` zeroed units on the heap, allocated once.
    pub fn heap(len: usize) -> Result<Memory, Error> {
        #[cfg(not(loom))]
        {
            let layout = heap_layout(len)?;
            #[cfg(target_os = "linux")]
            if layout.size() >= HUGE_PAGE {
                if let Some((ptr, (base, map_len))) = huge_mapping(layout.size()) {
                    return Ok(Memory {
                        ptr,
                        len,
                        _owner: Owner::Anon { base, map_len },
                    });
                }
            }
            // SAFETY:
            // - `layout` has non-zero size (at least HEAP_ALIGN bytes);
            // - all-zero bytes are a valid `Atomic128` (on x86_64 an
            //   `UnsafeCell<u128>`, elsewhere portable-atomic's `AtomicU128`,
            //   also a plain 16-byte integer), so the zeroed allocation holds
            //   `len` initialised values.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut Atomic128;
            if ptr.is_null() {
                return Err(Error::OutOfMemory(format!(
                    "{} bytes for a table",
                    layout.size()
                )));
            }
            Ok(Memory {
                ptr,
                len,
                _owner: Owner::Alloc,
            })
        }
        #[cfg(loom)]
        {
            let _ = HEAP_ALIGN;
            let b: Box<[Atomic128]> = (0..len).map(|_| Atomic128::new(0)).collect();
            Ok(Memory {
                ptr: b.as_ptr(),
                len,
                _owner: Owner::Boxed { _units: b },
            })
        }
    }

    #[inline(always)]
    pub fn units(&self) -> &[Atomic128] {
        // SAFETY:
        // - `ptr..ptr+len` holds `len` initialised units (zeroed memory, a
        //   box, or a file region), owned by `_owner` or inside the mapping
        //   it keeps alive, and freed only when `self` is dropped;
        // - units are only ever accessed atomically.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// A range of a shared file's mapping, which `owner` keeps alive.
    pub fn mapped(
        ptr: *const Atomic128,
        len: usize,
        owner: std::sync::Arc<crate::shm::Mapping>,
    ) -> Memory {
        Memory {
            ptr,
            len,
            _owner: Owner::Mapped { _map: owner },
        }
    }
}

#[cfg(not(loom))]
impl Drop for Memory {
    fn drop(&mut self) {
        match self._owner {
            Owner::Alloc => {
                let layout = heap_layout(self.len).expect("the layout was valid at allocation");
                // SAFETY: `ptr` came from `alloc_zeroed` with exactly this
                // layout and is freed once, here.
                unsafe { std::alloc::dealloc(self.ptr as *mut u8, layout) }
            }
            Owner::Anon { base, map_len } => {
                // SAFETY: `base..base + map_len` is the mapping made by
                // `huge_mapping`, owned by `self` and unmapped once, here.
                unsafe { libc::munmap(base as *mut libc::c_void, map_len) };
            }
            Owner::Mapped { .. } => {}
        }
    }
}

#[cfg(all(test, not(loom), target_os = "linux"))]
mod tests {
    use super::*;

    /// The `VmFlags` of the mapping of this process that holds `addr`.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
            if let Some((a, b)) = range {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_string());
                }
            }
        }
        None
    }

    #[test]
    fn a_large_table_is_zeroed_huge_page_aligned_and_advised() {
        let len = HUGE_PAGE / 16 * 3 + 5;
        let mem = Memory::heap(len).unwrap();
        assert!(matches!(mem._owner, Owner::Anon { .. }));
        let units = mem.units();
        assert_eq!(units.len(), len);
        let addr = units.as_ptr() as usize;
        assert_eq!(addr % HUGE_PAGE, 0);
        // One word per 4 KiB page, and the last: all zero, all writable.
        for u in units.iter().step_by(4096 / 16).chain(units.last()) {
            assert_eq!(u.load(), 0);
            assert_eq!(u.compare_exchange(0, 7), Ok(0));
        }
        let flags = vm_flags(addr).expect("the table is mapped");
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            // `hg`: MADV_HUGEPAGE was applied to the mapping.
            assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        }
    }

    #[test]
    fn a_small_table_comes_from_the_allocator() {
        let mem = Memory::heap(1000).unwrap();
        assert!(matches!(mem._owner, Owner::Alloc));
        assert_eq!(mem.units().as_ptr() as usize % HEAP_ALIGN, 0);
        assert!(mem.units().iter().all(|u| u.load() == 0));
    }
}
