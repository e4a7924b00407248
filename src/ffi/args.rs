//! Turning C arguments into Rust values. Every check that can fail returns
//! a [`Failure`], which the boundary turns into a status and a message.

use super::engine::rk_engine;
use super::status::rk_status;
use crate::{Engine, Error};
use std::ffi::{c_char, CStr, OsStr};
use std::fmt;
use std::marker::PhantomData;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::str::Utf8Error;

/// Why an `rk_` call failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A required pointer argument (named) was NULL.
    Null(&'static str),
    /// A pointer argument (named) is not aligned for its type.
    Misaligned(&'static str),
    /// `key` was NULL with this non-zero `key_len`.
    NullKey(usize),
    /// `items[index].key` was NULL with this non-zero `key_len`.
    NullItemKey { index: usize, len: usize },
    /// A length argument (named) exceeds `isize::MAX`.
    TooLong(&'static str, usize),
    /// A string argument (named) is not UTF-8.
    Utf8(&'static str, Utf8Error),
    /// Any other invalid argument.
    Invalid(String),
    /// No policy has this name.
    NoSuchPolicy(String),
    /// The caller's buffer holds `given` bytes; `needed` are needed.
    BufferTooSmall { needed: usize, given: usize },
    /// The operation needs a Redis-backed engine.
    WrongEngineKind,
    /// The engine refused.
    Engine(Error),
}

impl From<Error> for Failure {
    #[inline]
    fn from(e: Error) -> Self {
        Failure::Engine(e)
    }
}

impl Failure {
    pub(crate) fn status(&self) -> rk_status {
        match self {
            Failure::Null(_) => rk_status::RK_ERR_NULL_POINTER,
            Failure::NullKey(_) | Failure::NullItemKey { .. } => rk_status::RK_ERR_NULL_KEY,
            Failure::Utf8(..) => rk_status::RK_ERR_INVALID_UTF8,
            Failure::Misaligned(_) | Failure::TooLong(..) | Failure::Invalid(_) => {
                rk_status::RK_ERR_INVALID_ARGUMENT
            }
            Failure::BufferTooSmall { .. } => rk_status::RK_ERR_BUFFER_TOO_SMALL,
            Failure::NoSuchPolicy(_) => rk_status::RK_ERR_UNKNOWN_POLICY,
            Failure::WrongEngineKind => rk_status::RK_ERR_WRONG_ENGINE_KIND,
            Failure::Engine(e) => rk_status::of(e),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Null(name) => write!(f, "`{name}` is NULL"),
            Failure::Misaligned(name) => write!(f, "`{name}` is not aligned for its type"),
            Failure::NullKey(len) => write!(
                f,
                "`key` is NULL but `key_len` is {len} (pass key_len 0 for the empty key)"
            ),
            Failure::NullItemKey { index, len } => write!(
                f,
                "`items[{index}].key` is NULL but its `key_len` is {len} \
                 (pass key_len 0 for the empty key)"
            ),
            Failure::TooLong(name, len) => {
                write!(f, "`{name}` is {len}, larger than PTRDIFF_MAX")
            }
            Failure::Utf8(name, e) => write!(f, "`{name}` is not valid UTF-8: {e}"),
            Failure::Invalid(m) => write!(f, "invalid argument: {m}"),
            Failure::NoSuchPolicy(name) => write!(f, "no policy is named {name:?}"),
            Failure::BufferTooSmall { needed, given } => write!(
                f,
                "the buffer holds {given} bytes; {needed} are needed (including the NUL)"
            ),
            Failure::WrongEngineKind => write!(
                f,
                "the engine is not Redis-backed (open it with rk_engine_open_redis)"
            ),
            Failure::Engine(e) => write!(f, "{e}"),
        }
    }
}

/// Checks that a pointer the function will dereference is non-NULL and aligned.
#[inline(always)]
fn check<T>(p: *const T, name: &'static str) -> Result<(), Failure> {
    if p.is_null() {
        return Err(Failure::Null(name));
    }
    if !p.is_aligned() {
        return Err(Failure::Misaligned(name));
    }
    Ok(())
}

/// The engine behind `p`.
///
/// # Safety
/// `p` is NULL or was returned by `rk_engine_new`/`rk_engine_open_shared`
/// and not yet freed, and stays alive for `'a`.
#[inline(always)]
pub(crate) unsafe fn engine<'a>(p: *mut rk_engine) -> Result<&'a Engine, Failure> {
    check(p, "engine")?;
    // SAFETY:
    // - `p` is non-NULL and aligned (checked above);
    // - by the caller's contract it points to a live `rk_engine` made by
    //   `Box::into_raw`, which outlives `'a`;
    // - only shared references are ever made from it (`Engine` is `Sync`).
    Ok(unsafe { &(*p).engine })
}

/// The key bytes `key[0..key_len]`. NULL with length 0 is the empty key.
///
/// # Safety
/// If `key_len > 0` and `key` is non-NULL, `key` points to `key_len`
/// readable bytes that stay unchanged for `'a`.
#[inline(always)]
pub(crate) unsafe fn key<'a>(key: *const u8, key_len: usize) -> Result<&'a [u8], Failure> {
    if key_len == 0 {
        return Ok(&[]);
    }
    if key.is_null() {
        return Err(Failure::NullKey(key_len));
    }
    if key_len > isize::MAX as usize {
        return Err(Failure::TooLong("key_len", key_len));
    }
    // SAFETY:
    // - `key` is non-NULL; `u8` needs no alignment;
    // - by the caller's contract it points to `key_len` readable bytes that
    //   are not written during `'a`;
    // - `key_len <= isize::MAX` (checked above), as `from_raw_parts` requires.
    Ok(unsafe { std::slice::from_raw_parts(key, key_len) })
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays unchanged for `'a`.
pub(crate) unsafe fn utf8<'a>(p: *const c_char, name: &'static str) -> Result<&'a str, Failure> {
    // SAFETY: forwarded from this function's contract.
    let bytes = unsafe { c_bytes(p, name)? };
    std::str::from_utf8(bytes).map_err(|e| Failure::Utf8(name, e))
}

/// A NUL-terminated path argument (any bytes but NUL, as on Unix).
///
/// # Safety
/// As for [`utf8`].
pub(crate) unsafe fn path<'a>(p: *const c_char, name: &'static str) -> Result<&'a Path, Failure> {
    // SAFETY: forwarded from this function's contract.
    let bytes = unsafe { c_bytes(p, name)? };
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// # Safety
/// As for [`utf8`].
unsafe fn c_bytes<'a>(p: *const c_char, name: &'static str) -> Result<&'a [u8], Failure> {
    if p.is_null() {
        return Err(Failure::Null(name));
    }
    // SAFETY:
    // - `p` is non-NULL; by the caller's contract it points to a
    //   NUL-terminated string that stays unchanged for `'a`.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// A required input struct.
///
/// # Safety
/// `p` is NULL or points to a readable, initialised `T` that stays
/// unchanged for `'a`.
#[inline(always)]
pub(crate) unsafe fn input<'a, T>(p: *const T, name: &'static str) -> Result<&'a T, Failure> {
    check(p, name)?;
    // SAFETY:
    // - non-NULL and aligned (checked above); readable, initialised and
    //   unchanged for `'a` by the caller's contract.
    Ok(unsafe { &*p })
}

/// A required input array `p[0..n]` of `T`. `n == 0` is the empty slice
/// whatever `p` is (the caller decides whether an empty array is an error).
///
/// # Safety
/// If `n > 0` and `p` is non-NULL, `p` points to `n` readable, initialised
/// `T`s that stay unchanged for `'a`.
#[inline(always)]
pub(crate) unsafe fn slice<'a, T>(
    p: *const T,
    n: usize,
    name: &'static str,
) -> Result<&'a [T], Failure> {
    if n == 0 {
        return Ok(&[]);
    }
    check(p, name)?;
    if n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Failure::TooLong("n", n));
    }
    // SAFETY:
    // - `p` is non-NULL and aligned (checked above);
    // - by the caller's contract it points to `n` readable, initialised `T`s
    //   that are not written during `'a`;
    // - `n * size_of::<T>() <= isize::MAX` (checked above).
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A caller's output array `p[0..n]` of `T` (initialised or not), checked
/// for NULL and alignment. `n == 0` is the empty slice whatever `p` is.
///
/// # Safety
/// If `n > 0` and `p` is non-NULL, `p` is valid for writing `n` `T`s for
/// `'a`, and nothing else accesses them meanwhile.
pub(crate) unsafe fn out_slice<'a, T>(
    p: *mut T,
    n: usize,
    name: &'static str,
) -> Result<&'a mut [std::mem::MaybeUninit<T>], Failure> {
    if n == 0 {
        return Ok(&mut []);
    }
    check(p, name)?;
    if n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Failure::TooLong("capacity", n));
    }
    // SAFETY:
    // - `p` is non-NULL and aligned (checked above); `MaybeUninit<T>` has
    //   the layout of `T` and may hold anything, so the caller's memory,
    //   initialised or not, is valid for it;
    // - by the caller's contract it is valid for writing `n` `T`s and not
    //   accessed by anyone else during `'a`;
    // - `n * size_of::<T>() <= isize::MAX` (checked above).
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast(), n) })
}

/// An out-parameter: checked for NULL and alignment up front (before the
/// function does anything), written at most once, at the end, on success.
pub(crate) struct Out<'a, T> {
    ptr: NonNull<T>,
    _lifetime: PhantomData<&'a mut T>,
}

impl<'a, T> Out<'a, T> {
    /// A required out-parameter.
    ///
    /// # Safety
    /// `p` is NULL or valid for writing a `T` (initialised or not) for `'a`
    /// (or, if the caller only ever uses [`write_prefix`](Self::write_prefix)
    /// with `bytes`, valid for writing that many bytes), and nothing else
    /// accesses it meanwhile.
    #[inline(always)]
    pub(crate) unsafe fn new(p: *mut T, name: &'static str) -> Result<Out<'a, T>, Failure> {
        check(p, name)?;
        Ok(Out {
            // `check` rejected NULL.
            ptr: NonNull::new(p).ok_or(Failure::Null(name))?,
            _lifetime: PhantomData,
        })
    }

    /// An optional out-parameter: NULL means the caller does not want it.
    ///
    /// # Safety
    /// As for [`new`](Self::new).
    #[inline(always)]
    pub(crate) unsafe fn optional(
        p: *mut T,
        name: &'static str,
    ) -> Result<Option<Out<'a, T>>, Failure> {
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { Out::new(p, name) }.map(Some)
    }

    /// Writes the value (without reading or dropping the old one, which
    /// may be uninitialised).
    #[inline(always)]
    pub(crate) fn write(self, value: T) {
        // SAFETY:
        // - `ptr` is non-NULL, aligned and valid for writes for `'a`, and not
        //   accessed by anyone else meanwhile (checked or promised at `new`);
        // - `write` neither reads nor drops the old contents.
        unsafe { self.ptr.as_ptr().write(value) }
    }
}

impl<T: Copy> Out<'_, T> {
    /// Writes only the first `bytes` bytes of `value` (a versioned output
    /// struct whose caller knows only its first fields), leaving the rest
    /// of the caller's memory alone. `bytes` is capped at `size_of::<T>()`.
    ///
    /// Only for `T`s without padding within the first `bytes` bytes (every
    /// byte copied is initialised).
    #[inline(always)]
    pub(crate) fn write_prefix(self, value: T, bytes: usize) {
        let bytes = bytes.min(std::mem::size_of::<T>());
        // SAFETY:
        // - the source is a local `T`, whose first `bytes` bytes are
        //   initialised (no padding there: this method's contract);
        // - `ptr` is non-NULL, aligned and valid for writing at least `bytes`
        //   bytes (checked or promised at `new`), and does not overlap the local.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&value as *const T).cast::<u8>(),
                self.ptr.as_ptr().cast::<u8>(),
                bytes,
            )
        }
    }
}

/// Copies `s` plus a NUL into the caller's buffer (`buf[0..buf_len]`) and
/// stores its length (without the NUL) in `len_out`. `buf == NULL` with
/// `buf_len == 0` only asks for the length (then `len_out` is required).
///
/// # Safety
/// `buf` is NULL or valid for writing `buf_len` bytes; `len_out` is NULL or
/// valid for writing a `size_t`; neither overlaps `s`.
pub(crate) unsafe fn copy_str_out(
    s: &str,
    buf: *mut c_char,
    buf_len: usize,
    len_out: *mut usize,
) -> Result<(), Failure> {
    let needed = s.len() + 1;
    if buf.is_null() {
        if buf_len != 0 {
            return Err(Failure::Null("buf"));
        }
        // SAFETY: forwarded from this function's contract.
        let len_out = unsafe { Out::new(len_out, "len_out (required when buf is NULL)")? };
        len_out.write(s.len());
        return Ok(());
    }
    if buf_len > isize::MAX as usize {
        return Err(Failure::TooLong("buf_len", buf_len));
    }
    // SAFETY: forwarded from this function's contract.
    let len_out = unsafe { Out::optional(len_out, "len_out")? };
    if buf_len < needed {
        return Err(Failure::BufferTooSmall {
            needed,
            given: buf_len,
        });
    }
    // SAFETY:
    // - `buf` is non-NULL and valid for `buf_len >= needed` bytes of writes
    //   (caller's contract, length checked above); `u8` needs no alignment;
    // - the caller's buffer does not overlap `s`, which the engine owns.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        buf.add(s.len()).write(0);
    }
    if let Some(out) = len_out {
        out.write(s.len());
    }
    Ok(())
}

/// The `struct_size` (first field, a `u32`) of a caller's versioned options
/// struct, checked to be at least `min` bytes.
///
/// # Safety
/// `p` is non-NULL, aligned, and points to at least 4 readable,
/// initialised bytes (the `struct_size` field).
pub(crate) unsafe fn struct_size<T>(
    p: *const T,
    min: usize,
    name: &'static str,
) -> Result<usize, Failure> {
    // SAFETY:
    // - `p` is non-NULL and aligned for `T`, hence for its leading `u32`;
    //   the caller's contract makes those 4 bytes readable and initialised.
    let size = unsafe { p.cast::<u32>().read() } as usize;
    if size < min {
        return Err(Failure::Invalid(format!(
            "{name}->struct_size is {size}; it must be at least {min} \
             (initialise the struct with its _init function first)"
        )));
    }
    Ok(size)
}

/// Reads field `$field` (of type `$ty`) of the versioned struct `*$p` (of
/// type `$T`) if it lies entirely within the caller's `$size` bytes; `None`
/// otherwise.
///
/// Only for use where `$p` is non-NULL, aligned and its first `$size`
/// bytes are readable and initialised (the callers' safety contracts).
macro_rules! versioned_field {
    ($p:expr, $size:expr, $T:ty, $field:ident: $ty:ty) => {{
        let p: *const $T = $p;
        if ::std::mem::offset_of!($T, $field) + ::std::mem::size_of::<$ty>() <= $size {
            // SAFETY:
            // - the field lies within the caller's `$size` bytes (checked
            //   just above), which are readable, aligned and initialised by
            //   the surrounding function's contract;
            // - the annotation below makes `$ty` the field's own type.
            let v: $ty = unsafe { ::std::ptr::addr_of!((*p).$field).read() };
            Some(v)
        } else {
            None
        }
    }};
}
pub(crate) use versioned_field;

/// Reads the `bool` field `$field` of the versioned struct `*$p` (of type
/// `$T`, named `$name` in messages) if it lies within the caller's `$size`
/// bytes: `Ok(None)` if it does not, an invalid-argument failure if the
/// byte there is neither 0 nor 1 (a C caller can store any byte in a
/// `bool`, e.g. with `memset`; Rust must never see it as a `bool`).
///
/// Only for use where `$p` is non-NULL, aligned and its first `$size`
/// bytes are readable and initialised (the callers' safety contracts).
macro_rules! versioned_bool {
    ($p:expr, $size:expr, $T:ty, $name:literal, $field:ident) => {{
        let p: *const $T = $p;
        // The field must be a `bool` (one byte).
        let _: fn(&$T) -> &bool = |s| &s.$field;
        // The one-byte field lies within the caller's bytes.
        if ::std::mem::offset_of!($T, $field) < $size {
            // SAFETY:
            // - the field lies within the caller's `$size` bytes (checked
            //   just above), which are readable and initialised by the
            //   surrounding function's contract;
            // - it is read as a `u8` (same size, alignment 1), which any
            //   byte is.
            let byte: u8 = unsafe { ::std::ptr::addr_of!((*p).$field).cast::<u8>().read() };
            match byte {
                0 => Ok(Some(false)),
                1 => Ok(Some(true)),
                other => Err($crate::ffi::Failure::Invalid(format!(
                    "{}->{} is {other}; expected false (0) or true (1)",
                    $name,
                    stringify!($field)
                ))),
            }
        } else {
            Ok(None)
        }
    }};
}
pub(crate) use versioned_bool;
