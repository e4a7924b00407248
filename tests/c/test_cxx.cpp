// The header from C++: included twice (include guard), extern "C" linkage,
// enums usable as C++ types, structs usable as plain values.
#include "ratekeeper.h"
#include "ratekeeper.h"

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <type_traits>

static_assert(std::is_trivially_copyable<rk_decision>::value, "rk_decision is a plain value");
static_assert(std::is_trivially_copyable<rk_permit>::value, "rk_permit is a plain value");
static_assert(std::is_trivially_copyable<rk_check_item>::value, "rk_check_item is a plain value");
static_assert(std::is_trivially_copyable<rk_deny_event>::value, "rk_deny_event is a plain value");
static_assert(sizeof(rk_decision) == 48 && offsetof(rk_decision, limit) == 8,
              "rk_decision keeps its layout in C++ too");
static_assert(std::is_same<std::underlying_type<rk_status>::type, uint32_t>::value,
              "rk_status is 32 bits");
static_assert(RK_OK == 0, "RK_OK is 0");

namespace {

int failures = 0;

void expect(bool ok, const char *what) {
    if (!ok) {
        std::fprintf(stderr, "test_cxx: FAILED: %s (last error: %s)\n", what, rk_last_error());
        failures++;
    }
}

// A minimal RAII owner, as a C++ user would write one.
class Engine {
  public:
    Engine() { expect(rk_engine_new(nullptr, &engine_) == RK_OK, "rk_engine_new"); }
    ~Engine() { rk_engine_free(engine_); }
    Engine(const Engine &) = delete;
    Engine &operator=(const Engine &) = delete;
    rk_engine *get() const { return engine_; }

  private:
    rk_engine *engine_ = nullptr;
};

} // namespace

int main() {
    Engine engine;
    uint32_t login = 0;
    expect(rk_policy_add(engine.get(), "login", "5/minute", &login) == RK_OK, "rk_policy_add");
    const char key[] = "ip:203.0.113.7";
    const auto *bytes = reinterpret_cast<const uint8_t *>(key);
    rk_decision d{};
    for (int i = 0; i < 5; i++) {
        expect(rk_check_at(engine.get(), login, bytes, std::strlen(key), 1, 1000000000, &d) == RK_OK,
               "rk_check_at");
        expect(d.allowed, "allowed");
    }
    expect(rk_check_at(engine.get(), login, bytes, std::strlen(key), 1, 1000000000, &d) == RK_OK,
           "rk_check_at");
    expect(!d.allowed && d.retry_after_ns == 12000000000ull, "the sixth is denied for 12 s");

    rk_check_item items[1] = {{login, bytes, std::strlen(key), 1}};
    std::size_t index = 9;
    expect(rk_check_many_at(engine.get(), items, 1, 1000000000, &d, &index) == RK_OK,
           "rk_check_many_at");
    expect(!d.allowed && !d.banned && !d.shadow_denied && index == 0, "the batch is denied too");

    rk_status s = rk_policy_add(engine.get(), "login", "6/minute", &login);
    expect(s == RK_ERR_POLICY_MISMATCH, "mismatch");
    expect(std::strstr(rk_status_str(s), "RK_ERR_POLICY_MISMATCH") != nullptr, "rk_status_str");

    // The versioned-struct macros work in C++ too.
    rk_policy_options popts;
    rk_policy_options_init(&popts);
    expect(popts.struct_size == sizeof popts && !popts.shadow, "rk_policy_options_init");
    rk_stats stats;
    std::memset(&stats, 0xff, sizeof stats);
    expect(rk_policy_stats(engine.get(), login, &stats) == RK_OK, "rk_policy_stats");
    expect(stats.allowed == 5 && stats.denied == 2 && stats.bans == 0, "every field written");

    rk_engine_options opts;
    rk_engine_options_init(&opts);
    opts.clock = RK_CLOCK_MONOTONIC;
    rk_engine *other = nullptr;
    expect(rk_engine_new(&opts, &other) == RK_OK, "rk_engine_new with options");
    rk_engine_free(other);

    if (failures == 0)
        std::printf("test_cxx: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
