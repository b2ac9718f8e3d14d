//! A faithful fake of the contacto-virtual API on loopback, for tests, `demo` and clinics.
