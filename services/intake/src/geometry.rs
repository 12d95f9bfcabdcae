//! Boundaries of streets, communities and grids, the lookup of the area containing a position (an
//! R-tree of bounding boxes narrows the candidates, point-in-polygon decides), and distances. Pure:
//! no I/O. Coordinates are WGS-84 with x = longitude and y = latitude, as in WKT and GeoJSON.

use geo::algorithm::Validation;
use geo::coordinate_position::CoordPos;
use geo::{
    BoundingRect, CoordinatePosition, CoordsIter, Distance, Geometry, Haversine, InteriorPoint,
    MultiPolygon, Point, coord,
};
use rstar::RTree;
use rstar::primitives::{GeomWithData, Rectangle};
use wkt::TryFromWkt;

/// A boundary that parsed and passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Boundary(MultiPolygon<f64>);

impl Boundary {
    /// Parses a WGS-84 `POLYGON` or `MULTIPOLYGON` in WKT; refuses other geometries, coordinates
    /// off the globe, more than `max_points` vertices and invalid polygons (self-intersections,
    /// unclosed or too short rings, holes outside their shell), saying which.
    pub fn parse(text: &str, max_points: usize) -> Result<Self, String> {
        let geometry =
            Geometry::<f64>::try_from_wkt_str(text).map_err(|error| format!("not WKT: {error}"))?;
        let multi_polygon = match geometry {
            Geometry::Polygon(polygon) => MultiPolygon(vec![polygon]),
            Geometry::MultiPolygon(multi_polygon) => multi_polygon,
            other => {
                return Err(format!(
                    "must be a POLYGON or MULTIPOLYGON, got {}",
                    geometry_name(&other)
                ));
            }
        };
        if multi_polygon.0.is_empty() {
            return Err("must not be empty".into());
        }
        let points = multi_polygon.coords_count();
        if points > max_points {
            return Err(format!("at most {max_points} points, got {points}"));
        }
        if let Some(off) = multi_polygon.coords_iter().find(|coord| {
            !(coord.x.is_finite()
                && coord.y.is_finite()
                && (-180.0..=180.0).contains(&coord.x)
                && (-90.0..=90.0).contains(&coord.y))
        }) {
            return Err(format!(
                "coordinates are longitude latitude (WGS-84); ({} {}) is off the globe",
                off.x, off.y
            ));
        }
        multi_polygon
            .check_validation()
            .map_err(|problem| format!("invalid polygon: {problem}"))?;
        Ok(Self(multi_polygon))
    }

    /// Where a position lies relative to the boundary.
    pub fn position_of(&self, position: Position) -> CoordPos {
        self.0
            .coordinate_position(&coord! { x: position.lng, y: position.lat })
    }

    /// A position inside the boundary (not on it), to stand for the area when a caller names the
    /// area but gives no position.
    pub fn interior_position(&self) -> Option<Position> {
        self.0.interior_point().map(|point| Position {
            lat: point.y(),
            lng: point.x(),
        })
    }

    /// The boundary as WKT, as it is stored.
    pub fn to_wkt(&self) -> String {
        use wkt::ToWkt;
        self.0.wkt_string()
    }

    fn envelope(&self) -> Option<Rectangle<[f64; 2]>> {
        self.0
            .bounding_rect()
            .map(|rect| Rectangle::from_corners(rect.min().x_y().into(), rect.max().x_y().into()))
    }
}

fn geometry_name(geometry: &Geometry<f64>) -> &'static str {
    match geometry {
        Geometry::Point(_) => "POINT",
        Geometry::Line(_) | Geometry::LineString(_) => "LINESTRING",
        Geometry::MultiPoint(_) => "MULTIPOINT",
        Geometry::MultiLineString(_) => "MULTILINESTRING",
        Geometry::GeometryCollection(_) => "GEOMETRYCOLLECTION",
        Geometry::Rect(_) | Geometry::Triangle(_) => "a rectangle or triangle",
        Geometry::Polygon(_) | Geometry::MultiPolygon(_) => "a polygon",
    }
}

/// A WGS-84 position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    pub lat: f64,
    pub lng: f64,
}

/// Areas of one level (the grids, say) indexed for "which one contains this position".
#[derive(Debug)]
pub struct AreaIndex {
    tree: RTree<GeomWithData<Rectangle<[f64; 2]>, usize>>,
    areas: Vec<(String, Boundary)>,
    by_code: std::collections::HashMap<String, usize>,
}

impl AreaIndex {
    pub fn new(areas: Vec<(String, Boundary)>) -> Self {
        let entries = areas
            .iter()
            .enumerate()
            .filter_map(|(index, (_, boundary))| {
                boundary
                    .envelope()
                    .map(|rectangle| GeomWithData::new(rectangle, index))
            })
            .collect();
        let by_code = areas
            .iter()
            .enumerate()
            .map(|(index, (code, _))| (code.clone(), index))
            .collect();
        Self {
            tree: RTree::bulk_load(entries),
            areas,
            by_code,
        }
    }

    /// The boundary of the area `code`.
    pub fn boundary(&self, code: &str) -> Option<&Boundary> {
        self.by_code.get(code).map(|index| &self.areas[*index].1)
    }

    pub fn len(&self) -> usize {
        self.areas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.areas.is_empty()
    }

    /// The code of the area containing `position`. A position on a border belongs to the areas on
    /// both sides; the one it lies strictly inside wins, then the smallest code, so the answer never
    /// depends on the order areas were loaded in. Holes are outside.
    pub fn locate(&self, position: Position) -> Option<&str> {
        self.tree
            .locate_all_at_point(&[position.lng, position.lat])
            .filter_map(|entry| {
                let (code, boundary) = &self.areas[entry.data];
                match boundary.position_of(position) {
                    CoordPos::Inside => Some((0, code.as_str())),
                    CoordPos::OnBoundary => Some((1, code.as_str())),
                    CoordPos::Outside => None,
                }
            })
            .min()
            .map(|(_, code)| code)
    }
}

/// Great-circle distance in metres (haversine on the mean Earth radius; within 0.5 % of the
/// geodesic, plenty for merge distances of tens of metres).
pub fn distance_meters(a: Position, b: Position) -> f64 {
    Haversine.distance(Point::new(a.lng, a.lat), Point::new(b.lng, b.lat))
}

/// A latitude/longitude box that contains every position within `meters` of `center` (with a
/// margin), for a database query to narrow candidates before [`distance_meters`] decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchBox {
    pub min_lat: f64,
    pub max_lat: f64,
    pub min_lng: f64,
    pub max_lng: f64,
}

impl SearchBox {
    pub fn around(center: Position, meters: f64) -> Self {
        // a degree of latitude is at least 110.5 km; 2 % margin
        let lat_degrees = meters / 110_500.0 * 1.02;
        let cos = center.lat.to_radians().cos().abs().max(0.01);
        let lng_degrees = (lat_degrees / cos).min(360.0);
        Self {
            min_lat: center.lat - lat_degrees,
            max_lat: center.lat + lat_degrees,
            min_lng: center.lng - lng_degrees,
            max_lng: center.lng + lng_degrees,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn boundary(wkt: &str) -> Boundary {
        Boundary::parse(wkt, 1000).expect(wkt)
    }

    fn at(lng: f64, lat: f64) -> Position {
        Position { lat, lng }
    }

    /// A 10 × 10 square at the origin with a 2 × 2 hole in its middle, and its neighbour to the east.
    fn index() -> AreaIndex {
        AreaIndex::new(vec![
            (
                "b-east".into(),
                boundary("POLYGON ((10 0, 20 0, 20 10, 10 10, 10 0))"),
            ),
            (
                "a-west".into(),
                boundary("POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0), (4 4, 6 4, 6 6, 4 6, 4 4))"),
            ),
            (
                "c-hole".into(),
                boundary("POLYGON ((4.5 4.5, 5.5 4.5, 5.5 5.5, 4.5 5.5, 4.5 4.5))"),
            ),
        ])
    }

    #[test]
    fn inside_outside_and_holes() {
        let index = index();
        assert_eq!(index.locate(at(1.0, 1.0)), Some("a-west"));
        assert_eq!(index.locate(at(15.0, 5.0)), Some("b-east"));
        assert_eq!(index.locate(at(25.0, 5.0)), None, "east of everything");
        assert_eq!(index.locate(at(5.0, -0.001)), None, "just south");
        // inside the hole but outside the small square in it
        assert_eq!(index.locate(at(4.2, 4.2)), None);
        // the small square inside the hole is its own area
        assert_eq!(index.locate(at(5.0, 5.0)), Some("c-hole"));
    }

    #[test]
    fn borders_belong_to_one_area_deterministically() {
        let index = index();
        // on the shared edge x = 10: both touch it; the smallest code wins
        assert_eq!(index.locate(at(10.0, 5.0)), Some("a-west"));
        // a shared corner
        assert_eq!(index.locate(at(10.0, 10.0)), Some("a-west"));
        // an outer edge belongs to its only area
        assert_eq!(index.locate(at(20.0, 5.0)), Some("b-east"));
        assert_eq!(index.locate(at(15.0, 0.0)), Some("b-east"));
        // the hole's edge is the polygon's boundary
        assert_eq!(index.locate(at(4.0, 5.0)), Some("a-west"));
        // a point inside one area and on the border of another: inside wins
        let overlapping = AreaIndex::new(vec![
            ("a".into(), boundary("POLYGON ((0 0, 2 0, 2 2, 0 2, 0 0))")),
            ("b".into(), boundary("POLYGON ((1 0, 3 0, 3 2, 1 2, 1 0))")),
        ]);
        assert_eq!(overlapping.locate(at(1.0, 1.0)), Some("a"), "inside a");
        assert_eq!(overlapping.locate(at(2.0, 1.0)), Some("b"), "inside b");
    }

    #[test]
    fn concave_and_multi_polygons() {
        // an L: the notch at (1.5, 1.5) is outside
        let l_shape = AreaIndex::new(vec![
            (
                "l".into(),
                boundary("POLYGON ((0 0, 2 0, 2 1, 1 1, 1 2, 0 2, 0 0))"),
            ),
            (
                "islands".into(),
                boundary("MULTIPOLYGON (((5 5, 6 5, 6 6, 5 6, 5 5)), ((8 8, 9 8, 9 9, 8 9, 8 8)))"),
            ),
        ]);
        assert_eq!(l_shape.locate(at(0.5, 1.5)), Some("l"));
        assert_eq!(l_shape.locate(at(1.5, 1.5)), None);
        assert_eq!(l_shape.locate(at(8.5, 8.5)), Some("islands"));
        assert_eq!(l_shape.locate(at(7.0, 7.0)), None, "between the islands");
    }

    #[test]
    fn malformed_boundaries_say_why() {
        let refused = |wkt: &str| Boundary::parse(wkt, 1000).expect_err(wkt);
        assert!(refused("POINT (1 2)").contains("POLYGON"));
        assert!(refused("POLYGON ((0 0, 1 1").contains("WKT"));
        assert!(refused("POLYGON ((0 0, 2 2, 2 0, 0 2, 0 0))").contains("self-intersection"));
        assert!(refused("POLYGON ((0 0, 1 0, 0 0))").contains("invalid"));
        assert!(refused("POLYGON ((0 0, 200 0, 200 1, 0 1, 0 0))").contains("off the globe"));
        assert!(
            refused("POLYGON ((0 0, 1 0, 1 1, 0 1, 0 0), (5 5, 6 5, 6 6, 5 6, 5 5))")
                .contains("exterior")
        );
        let many = Boundary::parse("POLYGON ((0 0, 1 0, 1 1, 0 1, 0 0))", 4).expect_err("5 > 4");
        assert!(many.contains("at most 4"), "{many}");
    }

    #[test]
    fn an_interior_position_is_inside() {
        let index = index();
        let west = index.boundary("a-west").expect("known");
        let inside = west.interior_position().expect("a point");
        assert_eq!(west.position_of(inside), CoordPos::Inside);
        assert!(index.boundary("nope").is_none());
    }

    #[test]
    fn boundaries_survive_their_wkt() {
        let original =
            boundary("POLYGON ((110.796 32.635, 110.8 32.635, 110.8 32.639, 110.796 32.635))");
        assert_eq!(Boundary::parse(&original.to_wkt(), 1000), Ok(original));
    }

    #[test]
    fn distances_in_meters() {
        // 0.001° of latitude ≈ 111 m
        let a = at(110.7986, 32.6369);
        let b = at(110.7986, 32.6379);
        let meters = distance_meters(a, b);
        assert!((110.0..112.5).contains(&meters), "{meters}");
        assert_eq!(distance_meters(a, a), 0.0);
    }

    proptest! {
        #[test]
        fn the_search_box_holds_every_position_within_the_distance(
            lat in -80.0f64..80.0, lng in -179.0f64..179.0,
            meters in 1.0f64..5000.0, bearing in 0.0f64..360.0, fraction in 0.0f64..1.0,
        ) {
            use geo::Destination;
            let center = at(lng, lat);
            let target = Haversine.destination(Point::new(lng, lat), bearing, meters * fraction);
            let found = at(target.x(), target.y());
            let search = SearchBox::around(center, meters);
            prop_assert!(found.lat >= search.min_lat && found.lat <= search.max_lat);
            prop_assert!(found.lng >= search.min_lng && found.lng <= search.max_lng);
        }

        #[test]
        fn boundary_parsing_never_panics(text in ".{0,80}") {
            let _ = Boundary::parse(&text, 100);
        }
    }
}
