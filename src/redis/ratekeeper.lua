--[[
ratekeeper.lua: every operation of ratekeeper's Redis backend, atomically,
one script call per request. Protocol 3: a policy is one argument.

The contract with the Rust client (KEYS/ARGV layout, replies, time) is
PROTOCOL.md next to this file. The semantics are the in-process engine's,
function by function: each local function names the Rust function it
mirrors (src/algo/*.rs, src/abuse.rs, src/table/mod.rs, src/engine/batch.rs).

Numbers are Lua doubles. Every integer below 2^53 is exact, and so is every
figure below 2^53 computed here: quotients come from math.fmod (exact),
products that may pass 2^53 go through muldivmod, and times are compared by
their differences (now - start < period, not now < start + period). The
numbers of a state hash and TTLs (milliseconds, at most 2^53) are passed to
Redis as Lua numbers, which Redis formats with %.17g (the shortest exact
form in 7.2+): exact for every double, read back with tonumber; a compact
state holds doubles (struct '>d'). No string.format on a check.

The state (KEYS[2i-1]). Compact (it.compact: gcra, fixed and sliding window
limits only): one string of the values of it.fields below, in that order,
each an 8-byte big-endian double (struct it.fmt, '>d' per field; -1 for an
absent window start), read with the override by MGET and written by SET PX:
no decimal formatting or parsing on a check. Otherwise a hash of these
fields; for the limit at position k (1-based):
  gcra            k..'t'  theoretical arrival time (0: fresh)
  fixed_window    k..'s'  window start (absent: no window), k..'n' its count
  sliding_window  k..'w'  stored window index mod 2^32, k..'c' its count,
                  k..'p'  the count of the window before it
  sliding_log     the ring of sliding_log.rs: k..'h' its head (the oldest
                  entry), k..'m' the newest timestamp ('' or absent: none),
                  k..'l'..j slots 64j..64j+63 of the ring, 8 bytes each
                  (struct '>d' of timestamp + 1; 0 or absent: empty), so
                  that a call reads and writes only the chunks it needs;
                  k..'k' the slots in use (a run ending at the newest;
                  absent: all, if there is an entry)
  concurrency     'E'     the leases' expiries, 8 bytes each (struct '>d';
                          0 or absent: free), 'T'..i "token holder" of lease i
  penalty box     'ps'    strike TAT, 'pl' bans so far, 'pu' banned until
A key lives only while its state differs from fresh: a write that leaves it
fresh deletes it, and its TTL ends when it would be fresh. The in-process
table keeps a slot until it is reused, but may reclaim an expired slot at any
time; so the two agree on every decision, and where slot existence shows
(refund and reset report whether the key has state; a denial of a key with
no state is no strike) Redis answers as the table does after reclaiming.
]]

-- Everything but the entry points: built by the first call of a function
-- library (a library has no globals, not even math or string, while it
-- loads), or by every EVALSHA. Returns run.
local function library()

  -- Redis runs the body of this script on every call, so every function it
  -- defines is a new closure every time (with its upvalues, a good part of a
  -- call's cost). The functions that only some calls use (an algorithm other
  -- than gcra, fixed window and concurrency; overrides; the penalty box;
  -- refund; leases) are therefore declared first and defined by a define_*
  -- function when a call needs them.
  -- redis.call is set by run (a function library's is not there at load).
  local call
  local floor, fmod, max, min = math.floor, math.fmod, math.max, math.min
  local format, pack, unpack1, rep, sub = string.format, struct.pack, struct.unpack, string.rep, string.sub
  local find, concat = string.find, table.concat

  local TWO32 = 4294967296
  local TWO53 = 9007199254740992
  local U64 = 18446744073709551616 -- 2^64: stands for u64::MAX (a cost that never fits)
  local I63 = 9223372036854774784 -- largest double below 2^63 (a reply is a signed integer)
  local CAP = 4611686018427387904 -- 2^62: u64::MAX / 4 (+1), the cap of a scaled GCRA tolerance
  local MAX_COST = 16777215 -- algo::MAX_COST
  local MAX_TIME = 4611686018427387904 -- algo::MAX_TIME_NS
  local EPOCH = 1767225600 -- 2026-01-01T00:00:00Z, the origin of Redis TIME nanoseconds

  local function fail(msg)
    error({ err = 'rk: ' .. msg })
  end

  local function num(s)
    return format('%.0f', s)
  end

  -- floor(a / b) for integers a >= 0, b > 0: exact below 2^53, and an
  -- integer above (a - r may round there; the quotient is rounded back).
  local function idiv(a, b)
    return floor((a - fmod(a, b)) / b + 0.5)
  end

  -- ceil(a / b) for integers a >= 0, b > 0.
  local function ceil_div(a, b)
    local q = idiv(a, b)
    if fmod(a, b) > 0 then
      return q + 1
    end
    return q
  end

  -- floor(a * b / c) and a * b mod c for integers 0 <= a, b < 2^53, 0 < c < 2^53:
  -- the u128 products of the Rust code. Exact as long as the quotient is below
  -- 2^53: past the fast path, the quotient and remainder of b * 2^i by c are
  -- doubled bit by bit and summed over the bits of a, never forming a * b.
  local function muldivmod(a, b, c)
    local p = a * b
    if p < TWO53 then
      local r = fmod(p, c)
      return (p - r) / c, r
    end
    if a > b then
      a, b = b, a
    end
    local r = fmod(b, c)
    local q = (b - r) / c
    local Q, R = 0, 0
    while a > 0 do
      local bit = fmod(a, 2)
      if bit == 1 then
        Q = Q + q
        if R >= c - r then
          R, Q = R - (c - r), Q + 1
        else
          R = R + r
        end
      end
      a = (a - bit) / 2
      if a > 0 then
        q = q + q
        if r >= c - r then
          r, q = r - (c - r), q + 1
        else
          r = r + r
        end
      end
    end
    return Q, R
  end

  -- Reply form of a u64 figure: u64::MAX is -1, and a reply is a signed 64-bit
  -- integer (figures that large are approximate anyway).
  local function out(x)
    if x >= U64 then
      return -1
    end
    return min(x, I63)
  end

  ---------------------------------------------------------------------------
  -- Limits
  ---------------------------------------------------------------------------

  -- LimitParams::new. GCRA's tolerance is kept as tq * t + tr (tq = burst,
  -- tr = 0 unless a scaled tolerance hit its cap), so that its figures are
  -- exact however large burst * t is.
  local function limit_params(alg, count, period, burst)
    if count < 1 or period < 1 or burst < 0 then
      fail('bad limit ' .. alg)
    end
    local t = idiv(period, count)
    if alg == 'g' and t < 1 then
      fail('gcra limit of more than one request per nanosecond')
    end
    return { alg = alg, count = count, period = period, burst = burst, t = t, tq = burst, tr = 0, tol = burst * t }
  end

  local scale, scaled

  -- Defined when an override is in force.
  local function define_scaled()
    -- LimitParams::scaled: the limit with its quota times factor / 1000.
    function scale(n, factor)
      local v = muldivmod(n, factor, 1000)
      return min(max(v, 1), TWO32 - 1)
    end

    function scaled(l, factor)
      if factor == 0 or l.alg == 'l' or l.alg == 'c' then
        return l
      end
      local count = scale(l.count, factor)
      if l.alg ~= 'g' then
        return { alg = l.alg, count = count, period = l.period, burst = count, t = l.t, tq = count, tr = 0, tol = l.tol }
      end
      local burst = scale(l.burst, factor)
      local t = max(idiv(l.period, count), 1)
      local s = { alg = 'g', count = count, period = l.period, burst = burst, t = t, tq = burst, tr = 0, tol = burst * t }
      if s.tol >= CAP then
        -- tol = min(burst * t, u64::MAX / 4) = (2^62 - 1) = tq * t + tr
        local q, r = muldivmod(2147483648, 2147483648, t)
        if r >= 1 then
          s.tq, s.tr = q, r - 1
        else
          s.tq, s.tr = q - 1, t - 1
        end
        s.tol = CAP
      end
      return s
    end
  end

  ---------------------------------------------------------------------------
  -- The algorithms: evaluate returns allowed, limit, remaining, retry, reset
  ---------------------------------------------------------------------------

  -- algo::gcra::evaluate. With behind = max(tat, now) - now, allowed iff
  -- behind + c*T <= tol, i.e. behind - tr <= (tq - c) * T.
  local function gcra_eval(l, tat, cost, now)
    local behind = now
    if tat > now then
      behind = tat
    end
    behind = behind - now
    local over = max(behind - l.tr, 0)
    if cost <= l.burst and behind - l.tr <= (l.tq - cost) * l.t then
      -- remaining = floor((tol - behind - c*T) / T)
      return true, l.burst, l.tq - cost - ceil_div(over, l.t), 0, behind + cost * l.t
    end
    local retry = U64
    if cost <= l.burst then
      retry = behind - l.tr - (l.tq - cost) * l.t
    end
    local remaining = 0
    if behind - l.tr < l.tq * l.t then
      remaining = l.tq - ceil_div(over, l.t)
    end
    return false, l.burst, remaining, retry, behind
  end

  -- algo::fixed_window::evaluate
  local function fixed_eval(l, x, cost, now)
    local open = x.s ~= nil and now - x.s < l.period
    local count, left = 0, l.period
    if open then
      count, left = x.n, l.period - (now - x.s)
    end
    if count + cost <= l.count then
      if not open and cost == 0 then
        left = 0 -- a request of cost 0 opens no window
      end
      return true, l.count, l.count - count - cost, 0, left
    end
    if not open then
      left = 0
    end
    local retry = left
    if cost > l.count then
      retry = U64
    end
    return false, l.count, max(l.count - count, 0), retry, left
  end

  local sw_now, sw_counts, first_elapsed_at_most, sw_zero_in, sw_retry_in, sliding_eval

  -- Defined when a call has a sliding window limit.
  local function define_sliding_window()
    -- sliding_window::effective_now: a request stamped in a window before the
    -- stored one (and the state counts something) is decided at the stored
    -- window's start; the state never moves back to an older window.
    function sw_now(l, x, now)
      local w = idiv(now, l.period)
      local ahead = x.w - fmod(w, TWO32)
      if ahead < 0 then
        ahead = ahead + TWO32
      end
      if ahead == 0 or ahead >= TWO32 / 2 or (x.c == 0 and x.p == 0) then
        return now
      end
      return (w + ahead) * l.period
    end

    -- sliding_window::counts: (w, prev, cur) at now; the stored window index is
    -- kept mod 2^32 and compared by wrapping difference, as the Rust word does.
    function sw_counts(l, x, now)
      local w = idiv(now, l.period)
      local d = fmod(w, TWO32) - x.w
      if d < 0 then
        d = d + TWO32
      end
      if d == 0 then
        return w, x.p, x.c
      elseif d == 1 then
        return w, x.c, 0
      end
      return w, 0, 0
    end

    -- sliding_window::first_elapsed_at_most: smallest elapsed e in a window at
    -- which floor(n * (P - e) / P) <= x.
    function first_elapsed_at_most(n, x, P)
      if n == 0 then
        return 0
      end
      local q, r = muldivmod(x + 1, P, n)
      local bound = q -- floor(((x + 1) * P - 1) / n)
      if r == 0 then
        bound = q - 1
      end
      if bound >= P then
        return 0
      end
      return P - bound
    end

    -- until(sliding_window::zero_at(w, prev, cur, P), now), with elapsed = now - w*P.
    function sw_zero_in(prev, cur, P, elapsed)
      if cur > 0 then
        return P - elapsed + first_elapsed_at_most(cur, 0, P)
      elseif prev > 0 then
        return max(first_elapsed_at_most(prev, 0, P) - elapsed, 0)
      end
      return 0
    end

    -- sliding_window::retry_at(...) - now
    function sw_retry_in(prev, cur, elapsed, cost, limit, P)
      if cur + cost <= limit then
        local e = first_elapsed_at_most(prev, limit - cost - cur, P)
        if e < P then
          return max(e, elapsed) - elapsed
        end
      end
      return P - elapsed + first_elapsed_at_most(cur, limit - cost, P)
    end

    -- algo::sliding_window::evaluate
    function sliding_eval(l, x, cost, now)
      local P = l.period
      local t = sw_now(l, x, now)
      local late = t - now -- figures stay relative to the request's own now
      local _, prev, cur = sw_counts(l, x, t)
      local elapsed = fmod(t, P)
      local weighted = muldivmod(prev, P - elapsed, P) + cur
      if weighted + cost <= l.count then
        return true, l.count, l.count - weighted - cost, 0, sw_zero_in(prev, cur + cost, P, elapsed) + late
      end
      local retry = U64
      if cost <= l.count then
        retry = sw_retry_in(prev, cur, elapsed, cost, l.count, P) + late
      end
      local reset = 0
      if prev > 0 or cur > 0 then
        reset = sw_zero_in(prev, cur, P, elapsed) + late
      end
      return false, l.count, max(l.count - weighted, 0), retry, reset
    end
  end

  local log_chunk, log_slot, log_fill, log_entry, first_counting, log_eval

  -- Defined when a call has a sliding log limit.
  local function define_sliding_log()
    -- The sliding log's ring, in chunks of CHUNK slots loaded on first use.
    local CHUNK = 64

    function log_chunk(x, j)
      local c = x.ch[j]
      if c == nil then
        c = call('HGET', x.key, x.pre .. j) or ''
        x.ch[j] = c
      end
      return c
    end

    -- Slot pos of the ring: timestamp + 1, or 0 if empty.
    function log_slot(x, pos)
      local j = (pos - fmod(pos, CHUNK)) / CHUNK
      local c = log_chunk(x, j)
      local o = 8 * (pos - j * CHUNK)
      if o >= #c then
        return 0
      end
      return (unpack1('>d', c, o + 1))
    end

    -- Writes v into len slots from pos on (mod n).
    function log_fill(x, n, pos, len, v)
      local cell = pack('>d', v)
      while len > 0 do
        pos = fmod(pos, n)
        local j = (pos - fmod(pos, CHUNK)) / CHUNK
        local o = pos - j * CHUNK
        local run = min(len, CHUNK - o, n - pos)
        local c = log_chunk(x, j)
        if #c < 8 * (o + run) then
          c = c .. rep('\0', 8 * (o + run) - #c)
        end
        x.ch[j] = sub(c, 1, 8 * o) .. rep(cell, run) .. sub(c, 8 * (o + run) + 1)
        x.dirty[j] = true
        pos, len = pos + run, len - run
      end
    end

    -- Timestamp of ring entry i (0 = the oldest), or nil if empty.
    function log_entry(l, x, i)
      local v = log_slot(x, fmod(x.h + i, l.count))
      if v == 0 then
        return nil
      end
      return v - 1
    end

    -- sliding_log::first_counting: ring index of the first entry that counts
    -- (count if none). The ring is in time order from its head and its
    -- entries are one run ending at the newest (x.m, index count - 1), so
    -- the entries that count are a suffix: this finds its start as the
    -- binary search of the Rust code does, but gallops back from the newest
    -- first, so that a key with few entries reads only the chunks near its
    -- head (each chunk not loaded yet is one HGET), not log2(count) chunks
    -- across the ring.
    function first_counting(l, x, now)
      local n = l.count
      if x.m == nil or now - x.m >= l.period then
        return n -- no entry, or not even the newest counts
      end
      -- Ring indices below n - x.k hold no entry (x.k: slots in use, a
      -- run ending at the newest), so they are never read.
      local lo, hi, step = n - x.k, n - 1, 1 -- hi counts
      while step < n do
        local i = n - 1 - step
        if i < lo then
          break
        end
        local t = log_entry(l, x, i)
        if t ~= nil and now - t < l.period then
          hi = i
        else
          lo = i + 1
          break
        end
        step = step + step
      end
      while lo < hi do
        local mid = (lo + hi - fmod(lo + hi, 2)) / 2
        local t = log_entry(l, x, mid)
        if t ~= nil and now - t < l.period then
          hi = mid
        else
          lo = mid + 1
        end
      end
      return lo
    end

    -- algo::sliding_log::evaluate
    function log_eval(l, x, cost, now)
      local n = l.count
      local first = first_counting(l, x, now)
      local counted = n - first
      local newest = x.m
      if counted + cost <= n then
        local reset = 0
        if cost > 0 or counted > 0 then
          -- the entry this request writes (or, for cost 0, the newest)
          local stamp = now
          if newest ~= nil then
            stamp = newest
            if cost > 0 then
              stamp = max(stamp, now)
            end
          end
          reset = max(stamp - now + l.period, 0)
        end
        return true, n, n - counted - cost, 0, reset
      end
      local retry = U64
      if cost <= n then
        -- the oldest counted + cost - n counting entries must stop counting
        local t = log_entry(l, x, first + (counted + cost - n) - 1) or 0
        retry = max(t - now + l.period, 0)
      end
      local reset = 0
      if counted > 0 then
        reset = max((newest or 0) - now + l.period, 0)
      end
      return false, n, n - counted, retry, reset
    end
  end

  -- algo::concurrency::evaluate (the cost does not matter)
  local function conc_eval(l, x, now)
    local in_flight, soonest, latest = 0, U64, 0
    for i = 0, l.count - 1 do
      local e = x.e[i] or 0
      if e > now then
        in_flight = in_flight + 1
        soonest, latest = min(soonest, e), max(latest, e)
      end
    end
    if in_flight < l.count then
      return true, l.count, l.count - in_flight - 1, 0, max(latest - now, l.period)
    end
    return false, l.count, 0, soonest - now, max(latest - now, 0)
  end

  -- algo::evaluate
  local function evaluate(l, x, cost, now)
    local a = l.alg
    if a == 'g' then
      return gcra_eval(l, x.t, cost, now)
    elseif a == 'f' then
      return fixed_eval(l, x, cost, now)
    elseif a == 'w' then
      return sliding_eval(l, x, cost, now)
    elseif a == 'l' then
      return log_eval(l, x, cost, now)
    end
    return conc_eval(l, x, now)
  end

  -- algo::charge_word and Table::apply_limit (charge): only for allowed costs >= 1.
  local function charge(l, x, cost, now)
    local a = l.alg
    if a == 'g' then
      x.t = max(x.t, now) + cost * l.t
    elseif a == 'f' then
      if x.s ~= nil and now - x.s < l.period then
        x.n = x.n + cost
      else
        x.s, x.n = now, cost
      end
    elseif a == 'w' then
      local w, prev, cur = sw_counts(l, x, sw_now(l, x, now))
      x.w, x.p, x.c = fmod(w, TWO32), prev, cur + cost
    elseif a == 'l' then
      -- sliding_log::charge_meta and entries_written: cost entries stamped
      -- max(newest, now) take the places of the oldest ones.
      local stamp = now
      if x.m ~= nil then
        stamp = max(x.m, now)
      end
      log_fill(x, l.count, x.h, cost, stamp + 1)
      x.h, x.m = fmod(x.h + cost, l.count), stamp
      x.k = min(x.k + cost, l.count)
    end
  end

  local refund_limit

  -- Defined with refund.
  local function define_refund_limit()
    -- algo::refund_word and Table::apply_limit (refund): cost >= 1.
    function refund_limit(l, x, cost, now)
      local a = l.alg
      if a == 'g' then
        local tat = x.t - cost * l.t
        if tat <= now then
          tat = 0
        end
        x.t = tat
      elseif a == 'f' then
        -- Only from the window open at now, not one opened after it.
        if x.s ~= nil and now >= x.s and now - x.s < l.period then
          x.n = max(x.n - cost, 0)
        end
      elseif a == 'w' then
        -- By now's own window: the stored one or the one after it (cur),
        -- the one before it (prev), else nothing.
        local d = fmod(idiv(now, l.period), TWO32) - x.w
        if d < 0 then
          d = d + TWO32
        end
        if d <= 1 then
          x.c = max(x.c - cost, 0)
        elseif d == TWO32 - 1 then
          x.p = max(x.p - cost, 0)
        end
      elseif a == 'l' and x.m ~= nil and x.m > now then
        -- sliding_log::refundable: an entry newer than now is another
        -- request's; nothing is given back.
        return
      elseif a == 'l' then
        -- sliding_log::refund_meta, refund_keeper and entries_written: the
        -- newest cost entries go; the one before them is the newest.
        local n = l.count
        local c = min(cost, n)
        local h = fmod(x.h + n - c, n)
        local keeper = 0
        if c < n then
          keeper = log_slot(x, fmod(x.h + 2 * n - c - 1, n))
        end
        log_fill(x, n, h, c, 0)
        x.h, x.m = h, nil
        x.k = max(x.k - c, 0)
        if keeper ~= 0 then
          x.m = keeper - 1
        end
      end
    end
  end

  -- algo::expiry, relative to now: the state is equivalent to fresh once it
  -- is <= 0 (and time does not go back). One difference: a sliding window
  -- stored ahead of now (written by a clock ahead of this one) is kept until
  -- it has decayed, where algo::expiry calls it expired.
  local function expiry_in(l, x, now)
    local a = l.alg
    if a == 'g' then
      return x.t - now
    elseif a == 'f' then
      if x.s == nil then
        return 0
      end
      return x.s - now + l.period
    elseif a == 'w' then
      -- sliding_window::expiry
      local P = l.period
      local w = idiv(now, P)
      local back = fmod(w, TWO32) - x.w
      if back < 0 then
        back = back + TWO32
      end
      if back >= TWO32 / 2 then
        back = back - TWO32 -- stored ahead of now
      end
      if back > 1 or back > w then
        return 0
      end
      local elapsed = fmod(now, P)
      if x.c > 0 then
        return (1 - back) * P - elapsed + first_elapsed_at_most(x.c, 0, P)
      elseif x.p > 0 then
        return first_elapsed_at_most(x.p, 0, P) - back * P - elapsed
      end
      return 0
    elseif a == 'l' then
      if x.m == nil then
        return 0
      end
      return x.m - now + l.period
    end
    local latest = 0
    for i = 0, l.count - 1 do
      latest = max(latest, (x.e[i] or 0) - now)
    end
    return latest
  end

  ---------------------------------------------------------------------------
  -- Penalty box (abuse.rs)
  ---------------------------------------------------------------------------

  local strike, ban

  -- Defined when a call has a penalty box.
  local function define_penalty_box()
    -- abuse::strike: the strike TAT after one more denial; 0 means this strike
    -- starts a ban.
    function strike(p, st, now)
      local step = idiv(p.window, p.strikes)
      local tat = max(st, now) + step
      if tat - now > step * (p.strikes - 1) then
        return 0
      end
      return tat
    end

    -- abuse::ban: (bans so far, banned until) after a ban starting at now
    -- (a ban only starts when the key is not banned: until <= now).
    function ban(p, level, untl, now)
      if untl == 0 or now - untl >= p.max_ban then
        level = 0
      else
        level = min(level, 62)
      end
      return level + 1, now + min(p.ban * 2 ^ level, p.max_ban)
    end
  end

  ---------------------------------------------------------------------------
  -- State: loaded once per key and script call, written back at the end
  ---------------------------------------------------------------------------

  local states, order = {}, {}

  local function load(it)
    local s = states[it.key]
    if s then
      return s
    end
    s = { it = it, lim = {} }
    local v, over
    if it.compact then
      -- One string of the fields, in it.fields order, and the override: one
      -- command for both (same hash tag, so same slot).
      local r = call('MGET', it.key, it.okey)
      v, over = {}, r[2]
      s.exists = r[1] ~= false and #r[1] == 8 * #it.fields
      if s.exists then
        v = { unpack1(it.fmt, r[1]) }
        for j = 1, #it.fields do
          if v[j] < 0 then
            v[j] = false -- a fixed window's start: none
          end
        end
      end
    else
      v = call('HMGET', it.key, unpack(it.fields))
      local exists = false
      for j = 1, #v do
        if v[j] then
          exists = true
        end
      end
      s.exists = exists
    end
    local j = 1
    for k, l in ipairs(it.base) do
      local a, x = l.alg, {}
      if a == 'g' then
        x.t = tonumber(v[j]) or 0
        j = j + 1
      elseif a == 'f' then
        x.s, x.n = tonumber(v[j]), tonumber(v[j + 1]) or 0
        j = j + 2
      elseif a == 'w' then
        x.w, x.c, x.p = tonumber(v[j]) or 0, tonumber(v[j + 1]) or 0, tonumber(v[j + 2]) or 0
        j = j + 3
      elseif a == 'c' then
        x.e = {}
        local e = v[j] or ''
        if #e > 0 then
          local t = { unpack1('>' .. rep('d', #e / 8), e) }
          for i = 1, #e / 8 do
            x.e[i - 1] = t[i]
          end
        end
        j = j + 1
      else
        x.h, x.m = tonumber(v[j]) or 0, tonumber(v[j + 1])
        x.key, x.pre, x.ch, x.dirty = it.key, k .. 'l', { [0] = v[j + 2] or '' }, {}
        -- Ring slots in use (absent: assume all, unless there is no entry).
        x.k = tonumber(v[j + 3]) or (x.m and l.count or 0)
        j = j + 4
      end
      s.lim[k] = x
    end
    if it.pen then
      s.ps, s.pl, s.pu = tonumber(v[j]) or 0, tonumber(v[j + 1]) or 0, tonumber(v[j + 2]) or 0
    end
    -- The override (a string of thousandths); sliding_log and concurrency
    -- limits ignore it, so it is read only when it matters.
    s.factor = 0
    if it.compact then
      s.factor = tonumber(over) or 0
    elseif it.scalable then
      s.factor = tonumber(call('GET', it.okey)) or 0
    end
    s.eff = it.base
    if s.factor ~= 0 then
      if not scaled then
        define_scaled()
      end
      s.eff = {}
      for k, l in ipairs(it.base) do
        s.eff[k] = scaled(l, s.factor)
      end
    end
    states[it.key] = s
    order[#order + 1] = s
    return s
  end

  -- Writes every changed state back: the fields and a TTL up to the time at
  -- which all of it is equivalent to fresh (the penalty box remembers a ban
  -- for max_ban after it ends); a state already fresh is deleted.
  local function flush(now)
    for _, s in ipairs(order) do
      if s.dirty then
        local it = s.it
        local rel = 0
        for k, l in ipairs(it.base) do
          rel = max(rel, expiry_in(l, s.lim[k], now))
        end
        if it.pen then
          rel = max(rel, s.ps - now)
          if s.pu > 0 then
            rel = max(rel, s.pu - now + it.pen.max_ban)
          end
        end
        local ttl = min(ceil_div(rel, 1000000), TWO53) -- a Lua number: see the top
        if rel <= 0 then
          call('DEL', it.key)
        elseif it.compact then
          local v = {}
          for k, l in ipairs(it.base) do
            local x, a = s.lim[k], l.alg
            if a == 'g' then
              v[#v + 1] = x.t
            elseif a == 'f' then
              v[#v + 1] = x.s or -1
              v[#v + 1] = x.n
            else
              v[#v + 1] = x.w
              v[#v + 1] = x.c
              v[#v + 1] = x.p
            end
          end
          if it.pen then
            v[#v + 1] = s.ps
            v[#v + 1] = s.pl
            v[#v + 1] = s.pu
          end
          call('SET', it.key, pack(it.fmt, unpack(v)), 'PX', ttl)
        else
          if it.conc then
            local l, e = it.base[1], {}
            for i = 0, l.count - 1 do
              e[i + 1] = s.lim[1].e[i] or 0
            end
            call('HSET', it.key, 'E', pack('>' .. rep('d', l.count), unpack(e)))
          else
            -- Numbers go to Redis as Lua numbers (%.17g, exact; see the top).
            local args, j = {}, 0
            for k, l in ipairs(it.base) do
              local x, a = s.lim[k], l.alg
              if a == 'g' then
                args[j + 1], args[j + 2], j = k .. 't', x.t, j + 2
              elseif a == 'f' then
                if x.s ~= nil then
                  args[j + 1], args[j + 2], j = k .. 's', x.s, j + 2
                end
                args[j + 1], args[j + 2], j = k .. 'n', x.n, j + 2
              elseif a == 'w' then
                args[j + 1], args[j + 2] = k .. 'w', x.w
                args[j + 3], args[j + 4] = k .. 'c', x.c
                args[j + 5], args[j + 6], j = k .. 'p', x.p, j + 6
              else
                args[j + 1], args[j + 2] = k .. 'h', x.h
                args[j + 3], args[j + 4] = k .. 'm', x.m and x.m or ''
                args[j + 5], args[j + 6], j = k .. 'k', x.k, j + 6
                for c in pairs(x.dirty) do
                  args[j + 1], args[j + 2], j = x.pre .. c, x.ch[c], j + 2
                end
              end
            end
            if it.pen then
              args[j + 1], args[j + 2] = 'ps', s.ps
              args[j + 3], args[j + 4] = 'pl', s.pl
              args[j + 5], args[j + 6] = 'pu', s.pu
            end
            call('HSET', it.key, unpack(args))
          end
          call('PEXPIRE', it.key, ttl)
        end
      end
    end
  end

  ---------------------------------------------------------------------------
  -- Decisions (table/mod.rs, engine/decision.rs, engine/batch.rs)
  ---------------------------------------------------------------------------

  -- table::binds_over: does a bind over b? A denial over an allow; among
  -- denials the longest retry-after, among allows the fewest remaining; on a
  -- tie the earlier stays.
  local function binds_over(a, b)
    if a.allowed ~= b.allowed then
      return not a.allowed
    end
    if a.allowed then
      return a.remaining < b.remaining
    end
    return a.retry > b.retry
  end

  -- Table::decide with table::combine: every limit's verdict, the binding one
  -- reported; a cost beyond MAX_COST is evaluated as 0 and denied for ever.
  local function decide(s, cost, now)
    local c = cost
    if cost > MAX_COST then
      c = 0
    end
    local all, v = true, nil
    for k, l in ipairs(s.eff) do
      local a, limit, remaining, retry, reset = evaluate(l, s.lim[k], c, now)
      all = all and a
      local e = { allowed = a, limit = limit, remaining = remaining, retry = retry, reset = reset, index = k - 1 }
      if v == nil or binds_over(e, v) then
        v = e
      end
    end
    v.allowed, v.banned, v.new_ban = all, false, false
    if all then
      v.retry = 0
    end
    if cost > MAX_COST then
      v.allowed, v.retry = false, U64
    end
    return v
  end

  -- Table::decide (src/table/mod.rs): the verdict on one item; charges it if `charging` and
  -- allowed, counts a denial as a penalty-box strike if `striking`. A key with
  -- no state is decided as fresh and neither struck nor written unless charged.
  -- v, if given, is this item's verdict from decide on the same state.
  local function check_mode(it, now, charging, striking, v)
    local s = load(it)
    local cost = it.cost
    charging = charging and not it.conc -- a concurrency limit is taken by acquire only
    v = v or decide(s, cost, now)
    if not s.exists then
      if not charging or not v.allowed or cost == 0 then
        return v
      end
      s.exists = true -- the claim: a fresh state, charged below
    elseif it.pen then
      local p = it.pen
      if s.pu > now then
        v.allowed, v.banned, v.remaining = false, true, 0
        v.retry, v.reset = s.pu - now, max(v.reset, s.pu - now)
      elseif not v.allowed and striking and cost <= MAX_COST then
        -- This denial is a strike; the one over budget starts a ban.
        s.ps = strike(p, s.ps, now)
        if s.ps == 0 then
          s.pl, s.pu = ban(p, s.pl, s.pu, now)
          v.banned, v.new_ban, v.remaining = true, true, 0
          v.retry, v.reset = s.pu - now, max(v.reset, s.pu - now)
        end
        s.dirty = true
        return v
      end
    end
    if not charging or not v.allowed or cost == 0 then
      return v
    end
    for k, l in ipairs(s.eff) do
      charge(l, s.lim[k], cost, now)
    end
    s.dirty, s.charged = true, true
    return v
  end

  local refund

  -- Defined for refund, and for a batch that gives back what it charged.
  local function define_refund()
    define_refund_limit()
    -- Table::refund: gives cost back; 0 if the key holds no state.
    function refund(it, now)
      if it.conc then
        return 0
      end
      local s = load(it)
      if not s.exists then
        return 0
      end
      local cost = min(it.cost, MAX_COST)
      if cost == 0 then
        return 1
      end
      for k, l in ipairs(s.eff) do
        refund_limit(l, s.lim[k], cost, now)
      end
      s.dirty = true
      return 1
    end
  end

  -- Engine::check_many_at (one item: Engine::check_at). Every item is first
  -- decided without charge; if one denies, each denying item with a penalty
  -- box takes a strike, and a strike that starts a ban is the answer.
  -- Otherwise every item is charged in order (a later item with the same key
  -- sees the earlier charges; if it denies, the earlier ones are refunded).
  local function check(items, now, peek)
    local best, bi, first = nil, 0, {}
    for i, it in ipairs(items) do
      local v = check_mode(it, now, false, false)
      first[i] = v
      if best == nil or binds_over(v, best) then
        best, bi = v, i
      end
    end
    if peek then
      return best, bi
    end
    if not best.allowed then
      for j, it in ipairs(items) do
        if not first[j].allowed and it.pen then
          local v = check_mode(it, now, false, true)
          if v.new_ban then
            best, bi = v, j
          end
        end
      end
      return best, bi
    end
    -- Every item allows (none is banned): the first verdicts stand for the
    -- items whose state no earlier item has charged.
    best = nil
    for i, it in ipairs(items) do
      local v = first[i]
      if states[it.key].charged then
        v = nil
      end
      v = check_mode(it, now, true, true, v)
      if not v.allowed then
        if i > 1 and not refund then
          define_refund()
        end
        for j = 1, i - 1 do
          refund(items[j], now)
        end
        return v, i
      end
      if best == nil or binds_over(v, best) then
        best, bi = v, i
      end
    end
    return best, bi
  end

  local acquire, release

  -- Defined for acquire and release.
  local function define_leases()
    -- Table::acquire: a lease of a concurrency limit, held until now + ttl;
    -- returns the verdict and the lease index (-1 if none).
    function acquire(it, now, holder, token)
      if not it.conc then
        fail('acquire needs a concurrency limit')
      end
      local s = load(it)
      local v = decide(s, 1, now)
      if not v.allowed then
        return v, -1
      end
      local l, e = s.eff[1], s.lim[1].e
      local i = 0 -- concurrency::free_lease: the first never used, released or expired
      while (e[i] or 0) > now do
        i = i + 1
      end
      e[i] = max(now + l.period, 1)
      call('HSET', it.key, 'T' .. i, token .. ' ' .. holder)
      s.exists, s.dirty = true, true
      return v, i
    end

    -- Table::release: frees lease i if it is still the one taken with token
    -- (expired or not, as long as no one took it since).
    function release(it, i, token)
      if not it.conc or i >= it.base[1].count then
        return 0
      end
      local held = call('HGET', it.key, 'T' .. i)
      if not held or string.match(held, '^%S+') ~= token then
        return 0
      end
      local s = load(it)
      s.lim[1].e[i] = 0
      call('HDEL', it.key, 'T' .. i)
      s.dirty = true
      return 1
    end
  end

  ---------------------------------------------------------------------------
  -- Arguments and dispatch
  ---------------------------------------------------------------------------

  local EXTRA = {
    check = 0,
    peek = 0,
    refund = 0,
    reset = 0,
    acquire = 2,
    release = 2,
    override_set = 1,
    override_clear = 0,
    override_get = 0,
  }

  -- The arguments of the call in progress: argument i of PROTOCOL.md is A[i - O]
  -- (O = 1 for a function, whose arguments leave out the op).
  local A, O

  local function int_arg(i)
    local v = tonumber(A[i - O])
    if v == nil or v < 0 or v ~= v - fmod(v, 1) then
      fail('argument ' .. i .. ' is not a non-negative integer: ' .. tostring(A[i - O]))
    end
    return v
  end

  -- The policy of an item record: its one argument, the text
  -- "m alg count period_ns burst ... strikes window_ns ban_ns max_ban_ns"
  -- (PROTOCOL.md), parsed into limits (with their derived constants), state
  -- fields and penalty box. Built once per policy text and library, then
  -- kept (a function library lives on between calls): a call only looks its
  -- argument up.
  local function parse_policy(text)
    local f = {}
    for w in string.gmatch(text, '[^ ]+') do
      f[#f + 1] = w
    end
    local function field(j)
      local v = tonumber(f[j])
      if v == nil or v < 0 or v ~= v - fmod(v, 1) then
        fail('policy field ' .. j .. ' is not a non-negative integer: ' .. tostring(f[j]) .. ' in ' .. text)
      end
      return v
    end
    local m = field(1)
    if m < 1 or #f ~= 4 * m + 5 then
      fail('policy with a bad limit count ' .. m .. ': ' .. text)
    end
    local it = { base = {}, fields = {}, m = m }
    local a = 2
    for k = 1, m do
      local alg = f[a]
      if alg ~= 'g' and alg ~= 'f' and alg ~= 'w' and alg ~= 'l' and alg ~= 'c' then
        fail('unknown algorithm ' .. tostring(alg))
      end
      local l = limit_params(alg, field(a + 1), field(a + 2), field(a + 3))
      it.base[k] = l
      if alg == 'c' then
        if m ~= 1 then
          fail('a concurrency limit must be alone')
        end
        it.conc = true
        it.fields[#it.fields + 1] = 'E'
      elseif alg == 'f' then
        it.fields[#it.fields + 1] = k .. 's'
        it.fields[#it.fields + 1] = k .. 'n'
      elseif alg == 'w' then
        if not sliding_eval then
          define_sliding_window()
        end
        it.fields[#it.fields + 1] = k .. 'w'
        it.fields[#it.fields + 1] = k .. 'c'
        it.fields[#it.fields + 1] = k .. 'p'
      elseif alg == 'g' then
        it.fields[#it.fields + 1] = k .. 't'
      else
        if not log_eval then
          define_sliding_log()
        end
        it.log = true
        it.fields[#it.fields + 1] = k .. 'h'
        it.fields[#it.fields + 1] = k .. 'm'
        it.fields[#it.fields + 1] = k .. 'l0'
        it.fields[#it.fields + 1] = k .. 'k'
      end
      if alg == 'g' or alg == 'f' or alg == 'w' then
        it.scalable = true
      end
      a = a + 4
    end
    local strikes = field(a)
    if strikes > 0 then
      it.pen = { strikes = strikes, window = field(a + 1), ban = field(a + 2), max_ban = field(a + 3) }
      if it.pen.window < strikes or it.pen.ban < 1 or it.pen.max_ban < it.pen.ban then
        fail('bad penalty box')
      end
      if it.conc then
        fail('a penalty box needs a rate limit')
      end
      if not strike then
        define_penalty_box()
      end
      it.fields[#it.fields + 1] = 'ps'
      it.fields[#it.fields + 1] = 'pl'
      it.fields[#it.fields + 1] = 'pu'
    end
    it.compact = not it.conc and not it.log
    -- The compact state: one 8-byte double per field (PROTOCOL.md, "Keys").
    it.fmt = '>' .. rep('d', #it.fields)
    it.fast = not it.pen
    for k = 1, m do
      local a = it.base[k].alg
      if a ~= 'g' and a ~= 'f' then
        it.fast = false
      end
    end
    -- One gcra limit: its compact state is one number (check_fast).
    it.one_gcra = it.fast and m == 1 and it.base[1].alg == 'g'
    return it
  end

  local policies, npolicies = {}, 0

  -- The policy whose text is argument a, parsed once.
  local function policy_at(a)
    local text = A[a - O]
    local pol = policies[text]
    if pol == nil then
      pol = parse_policy(text)
      if npolicies >= 1024 then
        policies, npolicies = {}, 0
      end
      policies[text], npolicies = pol, npolicies + 1
    end
    return pol
  end

  -- check of one item whose limits are all gcra or fixed_window, with no
  -- penalty box (pol.fast), the most common call: what check, check_mode,
  -- decide and flush do for it, without their tables (the same decisions;
  -- the conformance tests drive both paths). Returns the reply.
  -- The reply of check_fast (one item, no penalty box).
  local function fast_reply(allowed, limit, remaining, retry, reset, index, now)
    return { allowed and 1 or 0, 0, out(limit), out(remaining), out(retry), out(reset), index, 0, 0, now, 0 }
  end

  local function check_fast(K, now, pol, cost)
    local base, m = pol.base, pol.m
    local r = call('MGET', K[1], K[2])
    local str = r[1]
    if str and #str ~= 8 * #pol.fields then
      str = false -- not a state of this layout: fresh
    end
    local eff = base
    if r[2] then
      local factor = tonumber(r[2]) or 0
      if factor ~= 0 then
        if not scaled then
          define_scaled()
        end
        eff = {}
        for k = 1, m do
          eff[k] = scaled(base[k], factor)
        end
      end
    end
    local c = cost
    if cost > MAX_COST then
      c = 0
    end
    if pol.one_gcra then
      -- One gcra limit: its theoretical arrival time, no table.
      local l, tat = eff[1], 0
      if str then
        tat = unpack1('>d', str)
      end
      local allowed, limit, remaining, retry, reset = gcra_eval(l, tat, c, now)
      if cost > MAX_COST then
        allowed, retry = false, U64
      end
      if allowed and cost ~= 0 then
        if tat < now then
          tat = now
        end
        tat = tat + cost * l.t
        if tat <= now then
          -- cost * T vanished in the rounding of a time past 2^53: fresh.
          call('DEL', K[1])
        else
          call('SET', K[1], pack('>d', tat), 'PX', min(ceil_div(tat - now, 1000000), TWO53))
        end
      end
      return fast_reply(allowed, limit, remaining, retry, reset, 0, now)
    end
    -- The state: the compact string's fields, in limit order.
    local v = str and { unpack1(pol.fmt, str) } or nil
    local xs, j = {}, 1
    for k = 1, m do
      if base[k].alg == 'g' then
        xs[k] = { t = v and v[j] or 0 }
        j = j + 1
      else
        local x = { n = 0 }
        if v then
          if v[j] >= 0 then
            x.s = v[j]
          end
          x.n = v[j + 1]
        end
        xs[k] = x
        j = j + 2
      end
    end
    -- decide: every limit's verdict, the binding one kept (binds_over).
    local all, ba, blimit, brem, bretry, breset, bindex = true, nil, 0, 0, 0, 0, 0
    for k = 1, m do
      local a, limit, remaining, retry, reset = evaluate(eff[k], xs[k], c, now)
      all = all and a
      local binds
      if ba == nil then
        binds = true
      elseif a ~= ba then
        binds = not a
      elseif a then
        binds = remaining < brem
      else
        binds = retry > bretry
      end
      if binds then
        ba, blimit, brem, bretry, breset, bindex = a, limit, remaining, retry, reset, k - 1
      end
    end
    local allowed, retry = all, bretry
    if all then
      retry = 0
    end
    if cost > MAX_COST then
      allowed, retry = false, U64
    end
    -- A denial changes nothing: no write.
    if allowed and cost ~= 0 then
      local rel, out_v = 0, {}
      for k = 1, m do
        local l, x = eff[k], xs[k]
        charge(l, x, cost, now)
        rel = max(rel, expiry_in(base[k], x, now))
        if l.alg == 'g' then
          out_v[#out_v + 1] = x.t
        else
          out_v[#out_v + 1] = x.s or -1
          out_v[#out_v + 1] = x.n
        end
      end
      if rel <= 0 then
        call('DEL', K[1])
      else
        -- The TTL in ms as a Lua number: Redis writes it with %.17g, exact
        -- for these integers (below 2^53).
        call('SET', K[1], pack(pol.fmt, unpack(out_v)), 'PX', min(ceil_div(rel, 1000000), TWO53))
      end
    end
    return fast_reply(allowed, blimit, brem, retry, breset, bindex, now)
  end

  -- One call: op over the keys K and the arguments args (see A, O above).
  local function run(op, K, args, offset)
    A, O = args, offset
    call = redis.call
    local extra = EXTRA[op]
    if extra == nil then
      fail('unknown op ' .. tostring(op))
    end

    local now
    if A[2 - O] == '' then
      local t = call('TIME')
      local sec = tonumber(t[1]) - EPOCH
      now = 0
      if sec >= 0 then
        now = sec * 1000000000 + tonumber(t[2]) * 1000
      end
    else
      now = min(int_arg(2), MAX_TIME)
    end

    -- The most common call, one item of a pol.fast policy, before any
    -- table is built.
    if op == 'check' and #K == 2 and (#A + O) == 5 and A[3 - O] == '1' then
      local pol = policy_at(5)
      if pol.fast then
        return check_fast(K, now, pol, int_arg(4))
      end
    end
    states, order = {}, {}
    local n = int_arg(3)
    if n < 1 or n > 64 or ((op ~= 'check' and op ~= 'peek') and n ~= 1) or #K ~= 2 * n then
      fail('bad item count ' .. n .. ' for ' .. op .. ' with ' .. #K .. ' keys')
    end

    local items, a = {}, 4
    for i = 1, n do
      if a + 1 > (#A + O) then
        fail('item ' .. i .. ' is cut short')
      end
      local cost = int_arg(a)
      local pol = policy_at(a + 1)
      items[i] = {
        key = K[2 * i - 1],
        okey = K[2 * i],
        cost = cost,
        base = pol.base,
        fields = pol.fields,
        conc = pol.conc,
        log = pol.log,
        pen = pol.pen,
        scalable = pol.scalable,
        compact = pol.compact,
        fmt = pol.fmt,
      }
      a = a + 2
    end
    if (#A + O) ~= a - 1 + extra then
      fail(op .. ' takes ' .. (a - 1 + extra) .. ' arguments, got ' .. (#A + O))
    end

    local it = items[1]
    local result
    if op == 'acquire' or op == 'release' then
      define_leases()
    elseif op == 'refund' then
      define_refund()
    end
    if op == 'check' or op == 'peek' or op == 'acquire' then
      local v, bi, lease
      if op == 'acquire' then
        local token = A[a + 1 - O]
        if int_arg(a) > 4294967295 or not string.match(token, '^[1-9]%d*$') then
          fail('bad holder or token')
        end
        v, lease = acquire(it, now, A[a - O], token)
        bi = 1
      else
        v, bi = check(items, now, op == 'peek')
        lease = 0
      end
      result = {
        v.allowed and 1 or 0,
        bi - 1,
        out(v.limit),
        out(v.remaining),
        out(v.retry),
        out(v.reset),
        v.index,
        v.banned and 1 or 0,
        v.new_ban and 1 or 0,
        now,
        lease,
      }
    elseif op == 'refund' then
      result = refund(it, now)
    elseif op == 'reset' then
      result = call('DEL', it.key)
    elseif op == 'release' then
      result = release(it, int_arg(a), A[a + 1 - O])
    elseif op == 'override_set' then
      local f = int_arg(a)
      if f < 1 or f > 16777216 then
        fail('bad override factor ' .. f)
      end
      call('SET', it.okey, num(f))
      result = 1
    elseif op == 'override_clear' then
      call('DEL', it.okey)
      result = 1
    else
      result = tonumber(call('GET', it.okey)) or 0
    end
    flush(now)
    return result
  end
  return run
end

if redis.register_function then
  -- A function library (FUNCTION LOAD, Redis 7+): the client prepends the
  -- library's name and `local SUFFIX = '_<version>'` (PROTOCOL.md). Every
  -- FCALL runs its entry point only; library() runs once.
  local run
  local function entry(op)
    return function(keys, args)
      if not run then
        run = library()
      end
      return run(op, keys, args, 1)
    end
  end
  redis.register_function('rk_check' .. SUFFIX, entry('check'))
  redis.register_function('rk_peek' .. SUFFIX, entry('peek'))
  redis.register_function('rk_refund' .. SUFFIX, entry('refund'))
  redis.register_function('rk_reset' .. SUFFIX, entry('reset'))
  redis.register_function('rk_acquire' .. SUFFIX, entry('acquire'))
  redis.register_function('rk_release' .. SUFFIX, entry('release'))
  redis.register_function('rk_override_set' .. SUFFIX, entry('override_set'))
  redis.register_function('rk_override_clear' .. SUFFIX, entry('override_clear'))
  redis.register_function('rk_override_get' .. SUFFIX, entry('override_get'))
else
  return library()(ARGV[1], KEYS, ARGV, 0)
end
