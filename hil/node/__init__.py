"""The emulated meters' node stack: MAC on the RF medium, RPL (non-storing) node, forwarding.

``mac`` sends and acks frames, ``linkcost`` turns link measurements into ETX, ``rpl_node`` joins
the DODAG and keeps parents and DAOs, ``forward`` decides what happens to each packet.
``hil.meter_node.MeterNode`` puts them together; ``sim_root`` is a bare root for tests/benches.
"""
