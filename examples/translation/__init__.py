"""German->English translation: the Debian-descriptions demo and the WMT14 recipe's tools."""
