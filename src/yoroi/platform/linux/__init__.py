"""Small adapters over Linux facilities: fanotify, proc connector, nftables, /proc, dpkg."""
