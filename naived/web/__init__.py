"""The web observer: a read-only page of the live tree and its JSON API, served by a child of the root.

The root pushes the tree's status (TreeStatus, as `naivectl status --json` prints it) on its
observer socket when it changed (`naived/tree/root.py` `publish_status`); `feed.py` takes it in,
`server.py` serves it (HTTP and a websocket, on the listening socket the root bound), and `static/`
holds the page. `main.py` is the process.
"""
