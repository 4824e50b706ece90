"""Serial (pyserial) device drivers: Contec CMS50 and Nonin oximeters, text-line devices.

The layout, from the wire up:

- `port`: a pyserial port used from asyncio, every blocking call on the port's
  own thread with a bounded timeout;
- `framing`, `contec_proto`, `nonin_proto`, `line_proto`: pure decoders (bytes
  in, samples out, counters of what was skipped), and the encoders the
  simulators in `gateway.sim.serial` use;
- `session`: turns a stream of oximeter samples into readings (spot or continuous);
- `options`: the config keys the drivers share;
- `base`: open the port, reopen it with backoff, report problems to the status;
- `oximeter`, `contec_cms50`, `nonin`, `line`: the drivers themselves.
"""
