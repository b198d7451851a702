"""Vietnamese place and person names for the simulated Quảng Ninh campaign (NFC, with diacritics)."""

from __future__ import annotations

import unicodedata

PROVINCE = ("QN", "Tỉnh Quảng Ninh")

# (name without the kind word, kind, area type of most of its households)
WARDS = [
    "Hạ Long", "Bãi Cháy", "Hà Lầm", "Hà Tu", "Cao Xanh", "Hồng Gai", "Tuần Châu", "Việt Hưng", "Hoành Bồ",
    "Cẩm Phả", "Quang Hanh", "Cửa Ông", "Mông Dương", "Uông Bí", "Vàng Danh", "Yên Tử", "Đông Triều",
    "Bình Khê", "Mạo Khê", "Hoàng Quế", "Quảng Yên", "Hiệp Hòa", "Hà An", "Liên Hòa", "Phong Cốc",
    "Đông Mai", "Móng Cái 1", "Móng Cái 2", "Móng Cái 3", "An Sinh",
]  # fmt: skip
COMMUNES = [
    ("Hải Hòa", "border"), ("Hải Sơn", "border"), ("Hải Ninh", "rural"), ("Vĩnh Thực", "island"),
    ("Cái Chiên", "island"), ("Đầm Hà", "rural"), ("Quảng Hà", "rural"), ("Đường Hoa", "border"),
    ("Quảng Tân", "rural"), ("Quảng Đức", "border"), ("Hoành Mô", "border"), ("Lục Hồn", "border"),
    ("Bình Liêu", "border"), ("Tiên Yên", "rural"), ("Điền Xá", "remote"), ("Đông Ngũ", "rural"),
    ("Hải Lạng", "rural"), ("Ba Chẽ", "remote"), ("Kỳ Thượng", "remote"), ("Lương Minh", "remote"),
    ("Thống Nhất", "rural"), ("Quảng La", "remote"),
]  # fmt: skip
SPECIAL_ZONES = ["Vân Đồn", "Cô Tô"]
SCHOOLS = [("DHHL", "Trường Đại học Hạ Long"), ("DHCNQN", "Trường Đại học Công nghiệp Quảng Ninh")]

FAMILY = [
    "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý", "Đinh",
    "Phan", "Trịnh", "Lương", "Tạ", "Chu", "Mạc",
]  # fmt: skip
MIDDLE_F = ["Thị", "Thu", "Ngọc", "Thanh", "Minh", "Phương", "Hồng", "Bích", "Khánh", "Mai"]
MIDDLE_M = ["Văn", "Đức", "Minh", "Quang", "Hữu", "Thành", "Công", "Xuân", "Trọng", "Tuấn"]
GIVEN_F = [
    "Hương", "Lan", "Hà", "Thảo", "Trang", "Linh", "Ngân", "Yến", "Huyền", "Nhung", "Vân", "Hạnh", "Trâm",
    "Quỳnh", "Diệp", "Ánh", "Thư", "Giang", "Uyên", "Mai",
]  # fmt: skip
GIVEN_M = [
    "Hùng", "Dũng", "Nam", "Tuấn", "Long", "Phong", "Quân", "Khánh", "Bình", "Đức", "Thắng", "Hiếu", "Sơn",
    "Trung", "Việt", "Hải", "Kiên", "Tùng", "Đạt", "Lộc",
]  # fmt: skip

YOUTH_TITLES = [
    "Kỹ năng số cho thiếu nhi mùa hè",
    "An toàn trên không gian mạng cho học sinh",
    "Em học lập trình Scratch",
    "Thiếu nhi với kỹ năng tìm kiếm thông tin an toàn",
    "Câu lạc bộ tin học hè",
]
ELDERLY_TITLES = [
    "Hướng dẫn cài đặt và kích hoạt VNeID",
    "Sử dụng dịch vụ công trực tuyến mức độ 3, 4",
    "Thanh toán không dùng tiền mặt cho người cao tuổi",
    "Nhận diện lừa đảo qua mạng",
    "Bình dân học vụ số cho hội viên phụ nữ",
]
POST_TITLES = {
    "fanpage": [
        "{u}: thanh niên hỗ trợ người dân cài đặt VNeID",
        "{u}: “Mỗi đoàn viên hỗ trợ một người dân” thực hiện dịch vụ công trực tuyến",
        "{u}: ra quân “đi từng ngõ, gõ từng nhà”",
        "{u}: lớp học “Bình dân học vụ số” cho người cao tuổi",
    ],
    "newspaper": [
        "Tuổi trẻ {u} đồng hành cùng chính quyền hai cấp",
        "{u}: thanh niên tình nguyện giúp người dân làm thủ tục trực tuyến",
    ],
    "visual": [
        "Ảnh: đội hình “Thắp sáng đỏ” tại {u}",
        "Video ngắn: hướng dẫn cài VNeID tại {u}",
        "Infographic: kết quả chiến dịch tại {u}",
    ],
}


def slug(name: str) -> str:
    """ASCII code fragment of a Vietnamese name: "Đặc khu Vân Đồn" -> "VANDON"."""
    decomposed = unicodedata.normalize("NFD", name.replace("Đ", "D").replace("đ", "d"))
    ascii_only = "".join(c for c in decomposed if c.isascii() and c.isalnum())
    return ascii_only.upper()
