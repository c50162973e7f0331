"""The only shared Streamlit code of the review app (outside the geomesh package).

- :mod:`ui.state`   session-state and widget keys, the cached Workspace
- :mod:`ui.errors`  GeomeshError → st.error; unexpected errors → an error id
- :mod:`ui.auth`    sign-in (local password or SSO) and the current user
- :mod:`ui.layout`  navigation, sidebar, the page context
- :mod:`ui.maps`    the offline Leaflet map (leafmap's folium backend)
- :mod:`ui.fmt`     small display helpers (escaping, colours)
"""
