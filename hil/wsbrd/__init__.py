"""An emulated Silicon Labs wsbrd on a private D-Bus: the gateway's wsbrd backend tested
without a radio (model: the network; service: the D-Bus interface; bus: a private daemon)."""
