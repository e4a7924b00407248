# Build and install ratekeeper's C library.
#
#   make lib                        # cargo build --release --lib
#   make install PREFIX=$HOME/.local  # header, libratekeeper.a/.so, pkg-config files
#   make test-c                     # C tests: plain, ASan+UBSan, valgrind, example
#
# Then:  cc app.c $(pkg-config --cflags --libs ratekeeper)         (shared)
#        cc app.c $(pkg-config --cflags --libs ratekeeper-static)  (static)
# (with PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig if PREFIX is not a system prefix)

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR ?=
CARGO ?= cargo
CARGO_TARGET_DIR ?= target
RELEASE_DIR := $(CARGO_TARGET_DIR)/release
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# What a static link of a Rust library needs (`--print native-static-libs`).
STATIC_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc

.PHONY: all lib install uninstall test-c clean

all: lib

lib:
	$(CARGO) build --release --lib

define pkgconfig
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@STATIC_LIBS@|$(STATIC_LIBS)|g' $(1) > $(2)
endef

install: lib
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 644 include/ratekeeper.h $(DESTDIR)$(INCLUDEDIR)/ratekeeper.h
	install -m 644 $(RELEASE_DIR)/libratekeeper.a $(DESTDIR)$(LIBDIR)/libratekeeper.a
	install -m 755 $(RELEASE_DIR)/libratekeeper.so $(DESTDIR)$(LIBDIR)/libratekeeper.so
	$(call pkgconfig,ratekeeper.pc.in,$(DESTDIR)$(PKGCONFIGDIR)/ratekeeper.pc)
	$(call pkgconfig,ratekeeper-static.pc.in,$(DESTDIR)$(PKGCONFIGDIR)/ratekeeper-static.pc)

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/ratekeeper.h $(DESTDIR)$(LIBDIR)/libratekeeper.a \
	      $(DESTDIR)$(LIBDIR)/libratekeeper.so $(DESTDIR)$(PKGCONFIGDIR)/ratekeeper.pc \
	      $(DESTDIR)$(PKGCONFIGDIR)/ratekeeper-static.pc

test-c:
	tests/c/run.sh

clean:
	$(CARGO) clean
