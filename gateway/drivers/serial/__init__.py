"""Serial (pyserial) device drivers: Contec CMS50 and Nonin oximeters, text-line devices.

The layout, from the wire up:

- `port`: a pyserial port read off the event loop (its own thread), reopened
  with backoff when it vanishes;
- `contec_proto`, `nonin_proto`, `line_proto`: pure decoders (bytes in,
  samples out, counters of what was skipped), and the encoders the simulators use;
- `session`: turns a stream of oximeter samples into readings (spot or continuous);
- `oximeter`, `contec_cms50`, `nonin`, `line`: the drivers themselves.
"""
